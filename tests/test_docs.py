"""The front page and the guides: every relative link leads somewhere, every `make` target they name exists."""
import glob
import os
import re
import subprocess

import pytest

from helpers import ROOT

PAGES = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def anchors(path):
    """GitHub's anchors for the headings of a markdown file."""
    with open(path) as f:
        text = re.sub(r"(?ms)^```.*?^```", "", f.read())
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
            for h in re.findall(r"(?m)^#{1,6} (.*)$", text)}


def read(page):
    with open(page) as f:
        return f.read()


def make_targets():
    with open(os.path.join(ROOT, "Makefile")) as f:
        return set(re.findall(r"(?m)^([a-z][\w-]*):", f.read()))


def named_targets(text):
    """`make a b VAR=x` in code spans and code blocks: the targets a and b (plain `make` runs the default)."""
    code = re.findall(r"(?ms)^```.*?^```", text) + re.findall(r"`([^`\n]+)`", text)
    found = set()
    for snippet in code:
        for match in re.finditer(r"(?:^|[\s;(]|&&)make((?: [a-z][\w-]*)+)", snippet, re.M):
            found.update(match.group(1).split())
    return found


def test_there_are_guides_and_a_short_front_page():
    assert len(PAGES) >= 8
    assert len(read(PAGES[0]).splitlines()) <= 150


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    for link in LINK.findall(read(page)):
        if re.match(r"^[a-z]+:", link):  # https:, mailto:
            continue
        path, _, anchor = link.partition("#")
        target = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        assert os.path.exists(target), "{} links to {}, which does not exist".format(page, link)
        if anchor:
            assert target.endswith(".md") and anchor in anchors(target), "{}: no heading for #{}".format(page, anchor)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_make_target_named_exists(page):
    named = named_targets(read(page))
    missing = named - make_targets()
    assert not missing, "{} names make targets that do not exist: {}".format(page, sorted(missing))


def test_the_finder_of_targets_finds_them():
    assert named_targets("run `make clean run ARGS=\"--epochs 2\"` or\n```sh\nmake bench ARGS=x\n```") == \
        {"clean", "run", "bench"}


def test_make_help_lists_every_target_once_with_one_line():
    done = subprocess.run(["make", "--no-print-directory", "help"], cwd=ROOT, stdout=subprocess.PIPE,
                          universal_newlines=True, check=True)
    listed = [line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")]
    assert sorted(listed) == sorted(make_targets()) and len(listed) == len(set(listed))
