"""BPF programs of roguewatch (C, compiled by bcc at load time) and their record layouts."""
