"""Prints the project's runtime requirements (dependencies plus the named extras), one per line.

Used by the images to install dependencies in their own cached layer before the project's wheel.
"""

import sys

import tomllib


def main(pyproject: str, *extras: str) -> None:
    """Writes the requirements of `pyproject` with `extras` to stdout."""
    with open(pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    sys.stdout.write("".join(f"{line}\n" for line in lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
