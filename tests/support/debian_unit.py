"""Reading the checkout's Debian packaging: files under debian/ and the systemd unit's directives."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEBIAN = os.path.join(ROOT, "debian")


def read(name):
    with open(os.path.join(DEBIAN, name), encoding="utf-8") as f:
        return f.read()


def unit_directives(text):
    """The unit's [Service] directives as {key: [values]} (systemd allows repeated keys)."""
    directives, section = {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        directives.setdefault((section, key.strip()), []).append(value.strip())
    return directives


def service(key):
    values = unit_directives(read("telegen.service")).get(("Service", key))
    assert values, f"telegen.service has no {key}="
    return values[-1]
