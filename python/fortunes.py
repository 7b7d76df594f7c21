#!/usr/bin/env python3
"""The fortunes corpus split as deltamoe reads it (io::load_fortunes; dev-only, standard
library): every regular file without an extension in /usr/share/games/fortunes, in name order,
documents separated by lines holding only "%", leading/trailing newlines stripped; of the
documents in reading order, index % 10 == 8 is validation, == 9 test, the rest train.

    python3 python/fortunes.py validation OUT.txt   # that split, documents joined by blank lines
"""
import os
import sys

FORTUNES = "/usr/share/games/fortunes"
SPLITS = {"train": None, "validation": 8, "test": 9}


def documents(directory=FORTUNES):
    docs = []
    for name in sorted(os.listdir(directory)):
        path = os.path.join(directory, name)
        if os.path.islink(path) or not os.path.isfile(path) or "." in name:
            continue
        cur = []
        with open(path, "rb") as f:
            lines = f.read().decode("utf-8", errors="replace").split("\n")
        for line in lines + ["%"]:
            if line == "%":
                doc = "".join(cur).strip("\r\n")
                if doc:
                    docs.append(doc)
                cur = []
            else:
                cur.append(line + "\n")
    return docs


def split(name, directory=FORTUNES):
    """The documents of split `name` (train, validation or test)."""
    r = SPLITS[name]
    return [d for i, d in enumerate(documents(directory))
            if (i % 10 == r if r is not None else i % 10 not in (8, 9))]


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SPLITS:
        sys.exit("usage: fortunes.py train|validation|test OUT.txt")
    with open(sys.argv[2], "w") as f:
        f.write("\n\n".join(split(sys.argv[1])) + "\n")


if __name__ == "__main__":
    main()
