"""Replaces the text between `<!-- bench:start -->` and `<!-- bench:end -->` in README.md with a
generated Markdown report (only the full run of bench/run.sh calls this).

    python3 bench/readme.py README.md RESULTS.md
"""

import sys

START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def main():
    readme, block = sys.argv[1], sys.argv[2]
    text = open(readme).read()
    new = open(block).read().strip()
    if text.count(START) != 1 or text.count(END) != 1 or text.index(START) > text.index(END):
        print(f"readme: {readme} has no single {START} ... {END} pair; left unchanged")
        return
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(readme, "w") as f:
        f.write(f"{head}{START}\n{new}\n{END}{tail}")
    print(f"readme: {readme} updated from {block}")


if __name__ == "__main__":
    main()
