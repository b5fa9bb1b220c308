#!/bin/bash
# `make deb`: postwarden_<version>_<arch>.deb in dist/. The venv under /opt/postwarden is built
# here from wheels (pymilter is compiled here, against libmilter-dev), so the target machine
# needs no compiler: only python3, libmilter1.0.1 and postfix.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
# Debian's own python3, the one the package depends on (never a python under /root or
# /usr/local: the unit's ProtectHome= would hide it, and the target machine has none).
PYTHON=/usr/bin/python3
VERSION=$("$PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
ARCH=$(dpkg --print-architecture)
PYVER=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
NEXT=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1] + 1}")')
NAME=postwarden_${VERSION}_${ARCH}
BUILD=$REPO/build/deb
STAGE=$BUILD/$NAME
WHEELS=$BUILD/wheels
mkdir -p "$REPO/dist"
rm -rf "$STAGE" "$WHEELS"
mkdir -p "$STAGE/DEBIAN" "$WHEELS"

echo "building the venv for /opt/postwarden"
"$PYTHON" -m venv "$STAGE/opt/postwarden"
echo "building wheels (postwarden and its dependencies) in $WHEELS"
"$STAGE/opt/postwarden/bin/pip" wheel -q --wheel-dir "$WHEELS" "$REPO"
"$STAGE/opt/postwarden/bin/pip" install -q --no-compile --no-index --find-links "$WHEELS" postwarden
# The venv was made at $STAGE/opt/postwarden: name /opt/postwarden instead (shebangs, pyvenv.cfg).
grep -rlI --null "$STAGE" "$STAGE/opt/postwarden/bin" "$STAGE/opt/postwarden/pyvenv.cfg" \
  | xargs -0 -r sed -i "s#$STAGE##g"
find "$STAGE/opt/postwarden" -name __pycache__ -type d -prune -exec rm -rf {} +
if grep -rqI "$STAGE" "$STAGE/opt/postwarden/bin" "$STAGE/opt/postwarden/pyvenv.cfg"; then
  echo "build.sh: staging path left in the venv" >&2
  exit 1
fi

install -d "$STAGE/usr/bin" "$STAGE/lib/systemd/system" "$STAGE/usr/lib/tmpfiles.d" \
  "$STAGE/etc/postwarden/policies" "$STAGE/usr/share/doc/postwarden"
ln -s /opt/postwarden/bin/postwarden "$STAGE/usr/bin/postwarden"
install -m 0644 deploy/postfix/postwarden.service "$STAGE/lib/systemd/system/postwarden.service"
# streams.md: the root releaser beside the unprivileged milter ([milter].releaser = "service")
install -m 0644 deploy/postfix/postwarden-releaser.service "$STAGE/lib/systemd/system/postwarden-releaser.service"
install -m 0644 deploy/postfix/postwarden.tmpfiles.conf "$STAGE/usr/lib/tmpfiles.d/postwarden.conf"
# metrics (issue 20): the daily dns-check that mails [rate].notify when a domain's DNS changes
install -m 0644 deploy/postfix/postwarden-dns-check.service deploy/postfix/postwarden-dns-check.timer \
  "$STAGE/lib/systemd/system/"
install -m 0640 deploy/postfix/postwarden.toml "$STAGE/etc/postwarden/postwarden.toml"
install -m 0640 deploy/postfix/00-defaults.toml "$STAGE/etc/postwarden/policies/00-defaults.toml"
DOC=$STAGE/usr/share/doc/postwarden
install -m 0644 README.md "$DOC/README.md"
install -m 0644 policies/README.md "$DOC/policies-README.md"
install -m 0644 policies/example.toml "$DOC/example.toml"
install -m 0644 deploy/postfix/main.cf.snippet deploy/postfix/master.cf.snippet "$DOC/"
printf 'postwarden\n\nLicense: MIT (see pyproject.toml). The venv under /opt/postwarden holds\nits Python dependencies, each under its own licence (see their dist-info folders).\n' \
  > "$DOC/copyright"

SIZE=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
cat > "$STAGE/DEBIAN/control" <<CONTROL
Package: postwarden
Version: $VERSION
Architecture: $ARCH
Maintainer: postwarden maintainers <root@localhost>
Installed-Size: $SIZE
Depends: python3 (>= $PYVER), python3 (<< $NEXT), libmilter1.0.1, postfix (>= 3.6), adduser, init-system-helpers
Section: mail
Priority: optional
Description: outbound-mail guard for Postfix (milter)
 postwarden decides every outgoing message (identity, header hygiene, rate caps, DKIM
 signing) and records each decision in SQLite. Its Python dependencies live in a venv under
 /opt/postwarden, built when the package was.
CONTROL
printf '/etc/postwarden/postwarden.toml\n/etc/postwarden/policies/00-defaults.toml\n' > "$STAGE/DEBIAN/conffiles"
for script in postinst prerm postrm; do
  install -m 0755 "deploy/debian/$script" "$STAGE/DEBIAN/$script"
done
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$REPO/dist/$NAME.deb" >/dev/null
echo "dist/$NAME.deb"
