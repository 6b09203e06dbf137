"""Facts about the host roguewatch runs on (kernel features, mounts, Landlock, capabilities)
and `roguewatch doctor`, which reports them with their fixes."""
