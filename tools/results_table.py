"""Print a markdown table of finished runs from their --metrics-out files.

    python tools/results_table.py results/*.json
"""
import json
import sys


def row(path):
    with open(path) as f:
        data = json.load(f)
    config, epochs = data["config"], data["epochs"]
    last = epochs[-1]
    worst = min(last["test_accuracy_per_class"])
    local = config["local_epochs"] if config["strategy"] == "fedavg" else 1
    partition = config["partition"]
    if partition == "noniid":
        partition += (" (Dirichlet {})".format(config["dirichlet_alpha"]) if config["dirichlet_alpha"]
                      else " ({} shards/client)".format(config["shards_per_client"]))
    strategy = config["strategy"]
    if config.get("aggregation", "server") != "server":
        strategy += " ({})".format(config["aggregation"])
    aggregation = [e["aggregation_seconds"] for e in epochs if "aggregation_seconds" in e]
    return "| {} | {} | {} | {} x {} | {:.2%} | {:.4f} | {:.0%} | {:.0f} | {} |".format(
        config["num_clients"], partition, strategy, len(epochs), local,
        last["test_accuracy"], last["test_loss"], worst, sum(e["seconds"] for e in epochs),
        "{:.2f}".format(sum(aggregation)) if aggregation else "-")


def main(paths):
    print("| clients | partition | strategy | epochs x local epochs | test acc. | test loss | worst class "
          "| seconds | aggregation s |")
    print("|---:|---|---|---|---:|---:|---:|---:|---:|")
    for path in paths:
        print(row(path))


if __name__ == "__main__":
    main(sys.argv[1:])
