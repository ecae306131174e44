"""What runs on this host: processes (/proc plus sched events) and, later, containers and pods."""
