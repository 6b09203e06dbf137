"""The kernel side as user space sees it: loading the BPF probes and the maps they share
(`bpf`), reading their ring buffer (`ringbuf`), and the second, independent sensor on files
(`watchers`, with `fanotify` for writer pids).

Sensors produce raw records and changes; they never judge them and never import the rule code."""
