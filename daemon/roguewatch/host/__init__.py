"""Facts about the host roguewatch runs on: kernel features, mounts, Landlock, capabilities.

`roguewatch doctor` (``cli.doctor``) reports them with their fixes."""
