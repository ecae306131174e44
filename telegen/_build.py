"""Build stamp. A plain checkout says "unknown"; the Debian build rewrites this file."""

COMMIT = "unknown"
BUILT = "unknown"
