"""Reference Inception Scores for tests/metrics/inception_score.cpp, following the original
improved-gan inception_score.py (Salimans et al. 2016) with numpy.

Usage: inception_score_numpy.py DIR

DIR/cases.txt lists one case per line: NAME N C SPLITS; DIR/NAME.bin holds the probabilities
(float64, little endian, row-major [N, C]). Writes DIR/results.json:
{NAME: {"mean": ..., "std": ..., "splits": [...]}}.
"""
import json
import os
import sys

import numpy as np


def inception_score(preds, splits):
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        kl = np.mean(np.sum(kl, 1))
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores)), [float(s) for s in scores]


def main():
    directory = sys.argv[1]
    results = {}
    with open(os.path.join(directory, "cases.txt")) as listing:
        for line in listing:
            if not line.strip():
                continue
            name, rows, classes, splits = line.split()
            preds = np.fromfile(os.path.join(directory, name + ".bin"), dtype="<f8").reshape(int(rows), int(classes))
            mean, std, scores = inception_score(preds, int(splits))
            results[name] = {"mean": mean, "std": std, "splits": scores}
    with open(os.path.join(directory, "results.json"), "w") as out:
        json.dump(results, out)


if __name__ == "__main__":
    main()
