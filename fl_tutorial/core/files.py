"""Files that are either complete or absent, even if the run is interrupted, and a trained model that is never lost."""
import os
import tempfile
import time

import torch


class Rescued(OSError):
    """The model could not be saved where asked; it was saved elsewhere, and the message says where."""


def atomic_write(path, write):
    """Call write(binary_file) on a temporary file in the same folder, then rename it to `path`."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out:
            write(out)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the result gets the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cannot_write(path):
    """Why no file can be written at `path` (its folder is made if missing), or None if one can.

    Checked before a run starts, so that a typo in an output path costs seconds, not a training run.
    """
    if os.path.isdir(path):
        return "it is a folder"
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as error:
        return "cannot write in {}: {}".format(folder, error.strerror or error)
    return None


def write_or_rescue(path, write, rescue_name):
    """atomic_write(path, write); if that fails, write `rescue_name` in the current folder, else in the temp folder.

    Returns (where it was written, the error that sent it elsewhere or None). What a
    long run produced is never lost because its folder vanished or its disk filled up.
    """
    try:
        atomic_write(path, write)
        return path, None
    except OSError as error:
        for folder in (os.getcwd(), tempfile.gettempdir()):
            rescue = os.path.join(folder, rescue_name)
            try:
                atomic_write(rescue, write)
                return rescue, error
            except OSError:
                continue
        raise


def save_model(state, path, program):
    """Save a trained state_dict at `path`, atomically; returns the line that says where it is.

    If `path` fails now (its folder vanished, the disk filled up), the model goes to
    PROGRAM-model-DATE.pt in the current folder, else in the temp folder, and Rescued says so.
    """
    rescue_name = "{}-model-{}.pt".format(program, time.strftime("%Y%m%d-%H%M%S"))
    saved, error = write_or_rescue(path, lambda f: torch.save(state, f), rescue_name)
    if error is not None:
        raise Rescued("could not save the model to {} ({}); it is saved in {} instead.".format(
            path, error.strerror or error, saved))
    return "Saved the model to {}".format(saved)
