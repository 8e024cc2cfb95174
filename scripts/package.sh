#!/usr/bin/env bash
# Builds Debian packages of mm_conflict, one per PostgreSQL major, named and laid out like the
# PostgreSQL community's (postgresql-NN-<name>):
#   target/package/postgresql-NN-mm-conflict_<version>-1_<arch>.deb
# holding the library (/usr/lib/postgresql/NN/lib), the control file and every install and upgrade
# script (/usr/share/postgresql/NN/extension), and README, LICENSE, CHANGELOG and a Debian
# changelog (/usr/share/doc/postgresql-NN-mm-conflict). It depends on postgresql-NN (Debian's
# server package carries dblink). The version comes from Cargo.toml, as the control file's and
# version()'s do.
#
# Usage: [PG_VERSIONS="15 16 18"] bash scripts/package.sh [--debug]
#   --debug   a debug build (faster to make; for tests), instead of the release build
# Prints the path of each package made.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$ROOT"

profile=release
if [ "${1:-}" = --debug ]; then profile=debug; fi

ensure_deps
VERSION="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)"
ARCH="$(dpkg --print-architecture)"
REVISION=1
OUT="$ROOT/target/package"
mkdir -p "$OUT"

# META.json (for PGXN) names the version too: it must say the same.
meta_version="$(python3 -c 'import json,sys; m=json.load(open(sys.argv[1])); print(m["version"], m["provides"]["mm_conflict"]["version"])' "$ROOT/META.json")"
[ "$meta_version" = "$VERSION $VERSION" ] ||
    die "META.json says version $meta_version, Cargo.toml $VERSION: make them the same"

# The Debian changelog of package $1, from CHANGELOG.md ("## <version> (<date>)" headings, then
# "- " items), newest first.
debian_changelog() {
    local package="$1"
    python3 - "$ROOT/CHANGELOG.md" "$package" "$REVISION" <<'PY'
import email.utils, re, sys, datetime, textwrap
text, package, revision = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3]
entries = re.findall(r"^## (\S+) \((\d{4}-\d{2}-\d{2})\)\n(.*?)(?=^## |\Z)", text, re.S | re.M)
if not entries:
    sys.exit("CHANGELOG.md has no '## <version> (<date>)' entries")
out = []
for version, date, body in entries:
    items = [re.sub(r"\s+", " ", i).strip() for i in re.split(r"^- ", body.strip(), flags=re.M) if i.strip()]
    out.append("%s (%s-%s) unstable; urgency=medium\n" % (package, version, revision))
    for item in items:
        out.append("\n".join(textwrap.wrap(item, 76, initial_indent="  * ", subsequent_indent="    ")))
    when = datetime.datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=datetime.timezone.utc)
    out.append("\n -- mm_conflict developers <mm_conflict@localhost>  %s\n"
               % email.utils.format_datetime(when))
print("\n".join(out))
PY
}

for major in $PG_VERSIONS; do
    use_pg "$major"
    package="postgresql-$major-mm-conflict"
    build="$OUT/build-$major"
    stage="$OUT/stage-$major"
    deb="$OUT/${package}_${VERSION}-${REVISION}_${ARCH}.deb"
    log "package $package $VERSION ($profile build for PostgreSQL $major)"
    rm -rf "$build" "$stage" "$deb"
    flags=()
    if [ "$profile" = debug ]; then flags=(--debug); fi
    cargo pgrx package --pg-config "$PG_CONFIG" --out-dir "$build" "${flags[@]}" >/dev/null
    # cargo pgrx package lays the files out under the build's own directories (a wheel's are
    # anywhere): take them from there and put them where the community packages put them.
    library="$(find "$build" -name 'mm_conflict.so' -type f | head -1)"
    control="$(find "$build" -path '*/extension/mm_conflict.control' -type f | head -1)"
    [ -n "$library" ] && [ -n "$control" ] || die "cargo pgrx package left no library or control file in $build"
    lib_dir="$stage/usr/lib/postgresql/$major/lib"
    ext_dir="$stage/usr/share/postgresql/$major/extension"
    doc_dir="$stage/usr/share/doc/$package"
    mkdir -p "$lib_dir" "$ext_dir" "$doc_dir" "$stage/DEBIAN"
    install -m 0755 "$library" "$lib_dir/mm_conflict.so"
    install -m 0644 "$control" "$ext_dir/"
    for script in "$(dirname "$control")"/mm_conflict--*.sql; do
        install -m 0644 "$script" "$ext_dir/"
    done
    install -m 0644 README.md CHANGELOG.md "$doc_dir/"
    install -m 0644 LICENSE "$doc_dir/copyright"
    debian_changelog "$package" | gzip -9n >"$doc_dir/changelog.Debian.gz"
    chmod 0644 "$doc_dir/changelog.Debian.gz"
    installed_kb="$(du -sk --exclude=DEBIAN "$stage" | cut -f1)"
    cat >"$stage/DEBIAN/control" <<EOF
Package: $package
Version: $VERSION-$REVISION
Architecture: $ARCH
Maintainer: mm_conflict developers <mm_conflict@localhost>
Depends: postgresql-$major, libc6
Section: database
Priority: optional
Installed-Size: $installed_kb
Description: multi-master replication over native logical replication for PostgreSQL $major
 mm_conflict makes a full mesh of PostgreSQL's native publications and subscriptions safe:
 a native row trigger, mm_resolve, stamps local writes and resolves replicated ones, so that
 replication neither halts nor loops and every node ends with identical data; SQL functions
 set up, watch, verify, repair and tear down the mesh. CREATE EXTENSION mm_conflict in each
 database (dblink, from postgresql-$major, for the mesh functions).
EOF
    (cd "$stage" && find usr -type f -print0 | sort -z | xargs -0 md5sum >DEBIAN/md5sums)
    dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
    echo "$deb"
done
