"""Reference FID for tests/metrics/fid.cpp, computed the way pytorch-fid does it.

Usage: fid_scipy.py DIR

DIR/cases.txt lists one case per line: NAME N_A N_B D. For each case DIR/NAME_a.bin and DIR/NAME_b.bin
hold the features (float64, little endian, row-major [N, D]). For each case this script writes
DIR/NAME_mu_a.bin, NAME_sigma_a.bin (and _b), the statistics of pytorch-fid's
calculate_activation_statistics (numpy.mean over rows, numpy.cov(rowvar=False)), and it writes
DIR/results.json: {NAME: {"fid": ..., "tr_covmean": ..., "offset_used": bool}} where fid follows
pytorch-fid's calculate_frechet_distance: scipy.linalg.sqrtm(sigma1.dot(sigma2)), retried with
eps * I added to both covariances when the root is not finite, real part taken.
"""
import json
import os
import sys

import numpy as np
from scipy import linalg


def statistics(features):
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    diff = mu1 - mu2
    covmean, _ = linalg.sqrtm(sigma1.dot(sigma2), disp=False)
    offset_used = False
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
        offset_used = True
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError("imaginary component %g" % np.max(np.abs(covmean.imag)))
        covmean = covmean.real
    tr_covmean = np.trace(covmean)
    fid = diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean
    return float(fid), float(tr_covmean), offset_used


def main():
    directory = sys.argv[1]
    results = {}
    with open(os.path.join(directory, "cases.txt")) as listing:
        for line in listing:
            if not line.strip():
                continue
            name, n_a, n_b, dim = line.split()
            n_a, n_b, dim = int(n_a), int(n_b), int(dim)
            stats = {}
            for side, rows in (("a", n_a), ("b", n_b)):
                path = os.path.join(directory, "%s_%s.bin" % (name, side))
                features = np.fromfile(path, dtype="<f8").reshape(rows, dim)
                mu, sigma = statistics(features)
                mu.astype("<f8").tofile(os.path.join(directory, "%s_mu_%s.bin" % (name, side)))
                sigma.astype("<f8").tofile(os.path.join(directory, "%s_sigma_%s.bin" % (name, side)))
                stats[side] = (mu, sigma)
            fid, tr_covmean, offset_used = frechet_distance(*stats["a"], *stats["b"])
            results[name] = {"fid": fid, "tr_covmean": tr_covmean, "offset_used": offset_used}
    with open(os.path.join(directory, "results.json"), "w") as out:
        json.dump(results, out, indent=1)


if __name__ == "__main__":
    main()
