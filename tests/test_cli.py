"""Bad command lines end with argparse's usage error (exit status 2) and no traceback."""
import pytest

from helpers import assert_clean_exit, parse, run_script


@pytest.mark.parametrize("argv, complaint", [
    (["--epochs", "0"], "--epochs: must be >= 1, got 0"),
    (["--epochs", "-3"], "--epochs: must be >= 1"),
    (["--epochs", "two"], "--epochs: 'two' is not an integer"),
    (["--epochs", "1.5"], "--epochs: '1.5' is not an integer"),
    (["--lr", "0"], "--lr: must be > 0.0, got 0"),
    (["--lr", "-0.01"], "--lr: must be > 0.0"),
    (["--lr", "abc"], "--lr: 'abc' is not a number"),
    (["--lr", "nan"], "--lr: must be > 0.0, got nan"),
    (["--lr", "inf"], "--lr: must be finite"),
    (["--batch-size", "0"], "--batch-size: must be >= 1"),
    (["--test-batch-size", "0"], "--test-batch-size: must be >= 1"),
    (["--log-interval", "0"], "--log-interval: must be >= 1"),
    (["--device", "tpu"], "--device: invalid choice: 'tpu'"),
    (["--seed", "-3"], "--seed: must be >= 0, got -3"),  # numpy's generator, used for the splits, refuses it
    (["--seed", "4294967296"], "--seed: must be below 2**32"),
])
def test_bad_values_are_usage_errors(argv, complaint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: ")
    assert complaint in err


def test_defaults_follow_the_pytorch_mnist_example():
    args = parse([])
    assert (args.batch_size, args.test_batch_size, args.seed, args.log_interval) == (64, 1000, 1, 10)
    assert (args.epochs, args.lr, args.data_dir, args.device, args.save_model) == (1, 0.01, "./data", "auto", None)
    assert parse(["--no-cuda"]).device == "cpu"


def test_bad_value_from_the_shell_exits_2_without_traceback():
    result = run_script("--epochs", "0", "--lr", "0.01")
    assert result.returncode == 2
    assert "argument --epochs: must be >= 1, got 0" in result.stderr
    assert_clean_exit(result)


@pytest.mark.slow
def test_the_largest_seed_splits_the_data(mnist_dir):
    result = run_script("--data-dir", mnist_dir, "--partition", "noniid", "--seed", "4294967295", "--max-batches", "1")
    assert result.returncode == 0, result.stderr
    assert_clean_exit(result)
