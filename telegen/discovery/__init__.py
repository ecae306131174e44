"""What runs on this host and where: processes (/proc plus sched events), their containers, pods and cloud instance (the resource chain in chain.py)."""
