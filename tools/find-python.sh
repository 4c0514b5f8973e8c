#!/bin/sh
# Print the path of a CPython of one of the given versions, or explain how to get one and fail.
#   sh tools/find-python.sh 3.8              the PySyft environment (.venv); $PYTHON38 may name one
#   sh tools/find-python.sh 3.11 3.12 3.13   the Flower twin's (.venv-flower); $PYTHON311 may name one
# Looks at, in order: that variable, the active conda env, pythonX.Y on PATH, pyenv, uv.
versions="$*"
first=${1:?usage: find-python.sh VERSION...}
var=PYTHON$(echo "$first" | tr -d .)
is_wanted() {
    [ -n "$1" ] && "$1" -c "import sys; sys.exit(not ('%d.%d' % sys.version_info[:2] in '$versions'.split() and sys.implementation.name == 'cpython'))" >/dev/null 2>&1
}
candidates() {
    eval "chosen=\${$var:-}"
    [ -n "$chosen" ] && echo "$chosen"
    [ -n "${CONDA_PREFIX:-}" ] && echo "$CONDA_PREFIX/bin/python" && echo "$CONDA_PREFIX/python.exe"
    for v in $versions; do
        command -v "python$v" 2>/dev/null  # a pyenv shim fails the test below unless that version is selected
        if command -v pyenv >/dev/null 2>&1; then
            ls -d "$(pyenv root)"/versions/"$v".*/bin/python"$v" 2>/dev/null
        fi
        command -v uv >/dev/null 2>&1 && uv python find "$v" 2>/dev/null
    done
}
for python in $(candidates); do
    if is_wanted "$python"; then
        echo "$python"
        exit 0
    fi
done
if [ "$first" = 3.8 ]; then
    cat >&2 <<'MSG'
error: no CPython 3.8 found (looked at $PYTHON38, the active conda env, python3.8 on PATH,
pyenv and uv). torch 1.4.0 and syft 0.2.6 need exactly Python 3.8. Get one, then run make again:
    uv python install 3.8
    pyenv install 3.8.18
    conda create -n py38 python=3.8 && conda activate py38
MSG
else
    cat >&2 <<MSG
error: no CPython $(echo "$versions" | sed 's/ / or /g') found (looked at \$$var, the active conda env,
python$first on PATH, pyenv and uv). Flower 1.42 needs Python 3.11 or newer. Get one, then run make again:
    uv python install $first
    pyenv install $first
    conda create -n py$(echo "$first" | tr -d .) python=$first && conda activate py$(echo "$first" | tr -d .)
MSG
fi
exit 1
