#!/bin/sh
# Print the path of a CPython 3.8 interpreter, or explain how to get one and fail.
# Looks at, in order: $PYTHON38, the active conda env, python3.8 on PATH, pyenv, uv.
is_cpython38() {
    [ -n "$1" ] && "$1" -c 'import sys; sys.exit(not (sys.version_info[:2] == (3, 8) and sys.implementation.name == "cpython"))' >/dev/null 2>&1
}
candidates() {
    [ -n "${PYTHON38:-}" ] && echo "$PYTHON38"
    [ -n "${CONDA_PREFIX:-}" ] && echo "$CONDA_PREFIX/bin/python" && echo "$CONDA_PREFIX/python.exe"
    command -v python3.8 2>/dev/null  # a pyenv shim here fails the test below unless 3.8 is selected
    if command -v pyenv >/dev/null 2>&1; then
        ls -d "$(pyenv root)"/versions/3.8.*/bin/python3.8 2>/dev/null
    fi
    command -v uv >/dev/null 2>&1 && uv python find 3.8 2>/dev/null
}
for python in $(candidates); do
    if is_cpython38 "$python"; then
        echo "$python"
        exit 0
    fi
done
cat >&2 <<'MSG'
error: no CPython 3.8 found (looked at $PYTHON38, the active conda env, python3.8 on PATH,
pyenv and uv). torch 1.4.0 and syft 0.2.6 need exactly Python 3.8. Get one, then run make again:
    uv python install 3.8
    pyenv install 3.8.18
    conda create -n py38 python=3.8 && conda activate py38
MSG
exit 1
