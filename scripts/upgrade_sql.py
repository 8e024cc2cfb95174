#!/usr/bin/env python3
"""Prints the statements an upgrade script (sql/mm_conflict--A--B.sql) needs, taken from where
they are defined, so that the script says exactly what a fresh install says.

Usage: scripts/upgrade_sql.py SCHEMA ITEM...

SCHEMA is this version's generated install script:
    CARGO_TARGET_DIR=target/schema cargo pgrx schema pg15 -o /tmp/mm_conflict--B.sql
Each ITEM is one of
    pgrx:NAME            the CREATE FUNCTION pgrx generates for Rust function mm_conflict.NAME
    file:PATH            a whole hand-written SQL file (sql/...)
    function:PATH:NAME   CREATE FUNCTION mm_conflict.NAME(...) ... $$; from PATH, with the
                         COMMENT ON FUNCTION / REVOKE statements on it that follow
    replace:PATH:NAME    the same as CREATE OR REPLACE FUNCTION (same signature, new body)
    config:NAME          ALTER FUNCTION mm_conflict.NAME(...) SET ... for the SET clauses pgrx
                         generates for Rust function NAME (its search_path)
The upgrade test (scripts/upgrade_test.sh) compares the upgraded catalog with a fresh install's,
which is what checks the result.
"""
import re
import sys


def pgrx_function(schema, name):
    m = re.search(r"CREATE +FUNCTION mm_conflict\.\"%s\"\(.*?AS 'MODULE_PATHNAME', '[^']+';" % re.escape(name),
                  schema, re.S)
    if not m:
        sys.exit("no pgrx function mm_conflict.%s in the schema" % name)
    return re.sub(r"CREATE +FUNCTION", "CREATE FUNCTION", m.group(0))


def pgrx_config(schema, name):
    """ALTER FUNCTION ... SET for each SET clause of pgrx function NAME."""
    text = pgrx_function(schema, name)
    args = text[text.index("(") + 1:]
    depth, end = 1, 0
    for i, c in enumerate(args):
        depth += {"(": 1, ")": -1}.get(c, 0)
        if depth == 0:
            end = i
            break
    body, rest = args[:end], args[end:]
    body = re.sub(r"/\*.*?\*/", "", body)
    types = []
    for part in filter(None, (p.strip() for p in body.split(","))):
        part = re.sub(r"\s+DEFAULT\s+.*$", "", part, flags=re.S)
        types.append(re.sub(r'^"[^"]+"\s+', "", part))
    sets = re.findall(r"^SET (.*)$", rest, re.M)
    return "\n".join('ALTER FUNCTION mm_conflict."%s"(%s) SET %s;' % (name, ", ".join(types), s)
                     for s in sets)


def sql_function(path, name):
    text = open(path).read()
    start = text.find("CREATE FUNCTION mm_conflict.%s(" % name)
    if start < 0:
        sys.exit("no function mm_conflict.%s in %s" % (name, path))
    end = text.index("\n$$;", start) + len("\n$$;")
    out = text[start:end]
    # The statements right after it that are about it.
    rest = text[end:]
    pattern = r"\n(COMMENT ON FUNCTION|REVOKE [A-Z ]+ ON FUNCTION|GRANT [A-Z ]+ ON FUNCTION) mm_conflict\.%s\(" % re.escape(name)
    while True:
        m = re.match(pattern, rest)
        if not m:
            break
        stop = rest.index(";", 1) + 1
        out += rest[:stop]
        rest = rest[stop:]
    return out


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    schema = open(argv[1]).read()
    for item in argv[2:]:
        kind, _, arg = item.partition(":")
        if kind == "pgrx":
            print(pgrx_function(schema, arg))
        elif kind == "file":
            print(open(arg).read().rstrip())
        elif kind == "function":
            path, _, name = arg.rpartition(":")
            print(sql_function(path, name))
        elif kind == "replace":
            path, _, name = arg.rpartition(":")
            print(sql_function(path, name).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1))
        elif kind == "config":
            print(pgrx_config(schema, arg))
        else:
            sys.exit("unknown item %r" % item)
        print()


if __name__ == "__main__":
    main(sys.argv)
