"""Does the suite catch small, realistic bugs? Hand-written mutants, each run
against only the tests that cover it.

Each mutant is one exact source snippet in one file of `tfhash/` and its
replacement: a bug of the kind a careful person could write and a quick look
would pass (a term dropped from a loss, a weight misapplied, a value frozen at
trace time, an off-by-one, a tie order or bit order reversed). The repository
is copied once (`git ls-files`: its tracked files and the untracked ones git
does not ignore, as they are in the working tree now) to a temporary folder;
each mutant is applied there alone, its covering tests run with
`python -m pytest -x -q` (cwd and PYTHONPATH at the copy, so the copy's
`tfhash` is imported, not the editable install's: checked before anything
runs), and the file is restored. The working tree is never written.

A mutant is *caught* when a covering test fails (pytest exit code 1) and
*survives* when they all pass (exit code 0); any other exit (collection
error, interrupted, no tests) is reported as an ERROR and counts as neither.
Before the mutants, the covering tests run once unmutated on the copy: they
must pass, or the figures mean nothing (skip with --no-baseline).

Usage:
    nice .venv/bin/python bench/mutants.py                # every mutant
    nice .venv/bin/python bench/mutants.py --list         # names and covering tests
    nice .venv/bin/python bench/mutants.py dhn_no_quantization bgan_no_adversarial
    nice .venv/bin/python bench/mutants.py --keep         # leave the copy, print where
    nice .venv/bin/python bench/mutants.py NAME --tests tests/test_x.py::test_y   # one test alone

Prints the unmutated run, then one line per mutant as it finishes (status,
name, seconds, and the first failing test), then the total:
    baseline  (unmutated)                             168.1 s  tests/test_annealed_sign.py tests/test_bgan.py ...
    caught    dhn_no_quantization                       6.1 s  tests/test_dhn.py::test_one_steps_loss_is_its_weighted_terms_by_hand failed
    SURVIVED  some_mutant                              40.1 s
    caught 24 of 24 mutants (0 survived, 0 errors) in 450 s
(24 of 24 caught (before the 7 transaction mutants were added), 450 s with the baseline, on 2 shared cores, when written.
The issue's two survivors, annealed_sign_frozen_beta and dhn_no_quantization,
passed the suite before the beta probe of tests/test_annealed_sign.py and the
one-step loss tests of tests/test_{dhn,bgan,dsh_gan,ssah,ugach}.py.)
Exit code 0 when every mutant is caught, 1 when one is not, 2 when the
baseline fails.
"""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Mutant:
    name: str
    file: str  # relative to the repository root
    old: str  # an exact snippet, found exactly once in the file
    new: str
    tests: list  # pytest node ids or files, relative to the root
    why: str = ""


MUTANTS = [
    # -- the two survivors ---------------------------------------------
    Mutant(
        "annealed_sign_frozen_beta", "tfhash/layers.py",
        "return ops.tanh(self.beta * inputs)",
        "return ops.tanh(self.initial_beta * inputs)",
        ["tests/test_annealed_sign.py"],
        "beta frozen at its initial value (a Python float traced into the graph)",
    ),
    Mutant(
        "dhn_no_quantization", "tfhash/models/dhn.py",
        '"quantization_loss": self.quantization_loss(codes)}',
        '"quantization_loss": 0.0 * self.quantization_loss(codes)}',
        ["tests/test_dhn.py"],
        "DHN without its quantization term",
    ),
    # -- one loss term dropped or misweighted per method ---------------------
    Mutant(
        "dhn_quantization_unweighted", "tfhash/models/dhn.py",
        'term_weights = {"pairwise_loss": 1.0, "quantization_loss": "quantization_weight"}',
        'term_weights = {"pairwise_loss": 1.0, "quantization_loss": 1.0}',
        ["tests/test_dhn.py"],
        "lambda not applied",
    ),
    Mutant(
        "bgan_no_adversarial", "tfhash/models/bgan.py",
        "                + self.adversarial_weight * adversarial\n",
        "",
        ["tests/test_bgan.py"],
        "BGAN's encoder + generator objective without -log D(G(b))",
    ),
    Mutant(
        "bgan_content_without_features", "tfhash/models/bgan.py",
        "content = tf.reduce_mean(tf.square(real - fake), axis=[1, 2, 3]) + tf.reduce_mean(\n"
        "                tf.square(real_features - fake_features), axis=[1, 2, 3]\n"
        "            )",
        "content = tf.reduce_mean(tf.square(real - fake), axis=[1, 2, 3])",
        ["tests/test_bgan.py"],
        "the discriminator-feature half of the content loss dropped",
    ),
    Mutant(
        "bgan_products_unscaled", "tfhash/models/bgan.py",
        "products = tf.matmul(b, tf.stop_gradient(b_all), transpose_b=True) / self.bits",
        "products = tf.matmul(b, tf.stop_gradient(b_all), transpose_b=True)",
        ["tests/test_bgan.py"],
        "<b_i, b_j> not divided by K in the neighbour loss",
    ),
    Mutant(
        "dsh_gan_no_triplet", "tfhash/models/dsh_gan.py",
        "supervised = self.classification_weight * classification + self.triplet_weight * triplet",
        "supervised = self.classification_weight * classification",
        ["tests/test_dsh_gan.py"],
        "DSH-GAN's shared CNN without the triplet ranking loss",
    ),
    Mutant(
        "dsh_gan_adversarial_unweighted", "tfhash/models/dsh_gan.py",
        "+ self.adversarial_weight * tf.reduce_sum(d_loss) / global_rows",
        "+ tf.reduce_sum(d_loss) / global_rows",
        ["tests/test_dsh_gan.py"],
        "the adversarial weight left out of the optimized loss (the logged one keeps it)",
    ),
    Mutant(
        "dsh_gan_generator_adversarial_doubled", "tfhash/models/dsh_gan.py",
        "g_loss = self.adversarial_weight * 0.5 * (",
        "g_loss = self.adversarial_weight * (",
        ["tests/test_dsh_gan.py"],
        "the generator's two adversarial terms summed, not averaged",
    ),
    Mutant(
        "ssah_no_quantization", "tfhash/models/ssah.py",
        'per_example = w["alpha"] * j1 + w["gamma"] * j2 + w["eta"] * j3 + w["beta"] * j4\n',
        'per_example = w["alpha"] * j1 + w["gamma"] * j2 + w["beta"] * j4\n',
        ["tests/test_ssah.py"],
        "LabNet's objective without J3",
    ),
    Mutant(
        "ssah_no_adversarial", "tfhash/models/ssah.py",
        'w["alpha"] * j1 + w["gamma"] * j2 + w["eta"] * j3 + w["beta"] * j4 + w["delta"] * adversarial',
        'w["alpha"] * j1 + w["gamma"] * j2 + w["eta"] * j3 + w["beta"] * j4',
        ["tests/test_ssah.py"],
        "ImgNet / TxtNet without the adversarial term",
    ),
    Mutant(
        "ugach_no_text_query", "tfhash/models/ugach.py",
        "d_rows = image_query + text_query",
        "d_rows = image_query",
        ["tests/test_ugach.py"],
        "UGACH's discriminator trained on image queries only",
    ),
    Mutant(
        "ugach_rewards_swapped", "tfhash/models/ugach.py",
        "tf.stack([tf.sigmoid(image_query), tf.sigmoid(text_query)], axis=-1)",
        "tf.stack([tf.sigmoid(text_query), tf.sigmoid(image_query)], axis=-1)",
        ["tests/test_ugach.py"],
        "each pick rewarded with the other modality's hinge",
    ),
    # -- shared losses ----------------------------------------------------------
    Mutant(
        "quantization_log_cosh_offset", "tfhash/losses.py",
        "return ops.sum(gap + ops.softplus(-2.0 * gap) - math.log(2.0), axis=-1)",
        "return ops.sum(gap + ops.softplus(-2.0 * gap), axis=-1)",
        ["tests/test_layers_losses.py", "tests/test_dhn.py"],
        "log cosh without its - log 2 (same gradient, wrong value)",
    ),
    Mutant(
        "balanced_weights_inverted", "tfhash/losses.py",
        "weights = 1.0 - similar + similar * (total / positives)",
        "weights = 1.0 - similar + similar * (positives / total)",
        ["tests/test_layers_losses.py", "tests/test_dhn.py"],
        "T / P turned upside down",
    ),
    # -- metrics, index, packing ------------------------------------------------
    Mutant(
        "map_rank_off_by_one", "tfhash/metrics.py",
        "sums = np.bincount(rows, weights=ordinal / (cols + 1.0), minlength=top.shape[0])",
        "sums = np.bincount(rows, weights=ordinal / (cols + 2.0), minlength=top.shape[0])",
        ["tests/test_metrics.py"],
        "precision at rank r divided by r + 1",
    ),
    Mutant(
        "map_cutoff_off_by_one", "tfhash/metrics.py",
        "    top = ranked[:, :k]\n",
        "    top = ranked[:, : k - 1]\n",
        ["tests/test_metrics.py"],
        "mAP@K over the first K - 1 items",
    ),
    Mutant(
        "index_range_ties_reversed", "tfhash/index.py",
        "order = np.lexsort((positions, distances, query_of))",
        "order = np.lexsort((-positions, distances, query_of))",
        ["tests/test_index.py"],
        "range_search ties by insertion order reversed",
    ),
    Mutant(
        "index_asks_faiss_for_extra", "tfhash/index.py",
        "        distances, positions = self._index.search(queries, k)\n"
        "        return distances, self._to_ids(positions)",
        "        distances, positions = self._index.search(queries, min(1024 * k, 2**20))  # headroom for ties\n"
        "        return distances[:, :k], self._to_ids(positions[:, :k])",
        ["tests/test_index.py"],
        "faiss asked for more neighbours than the index holds (results sliced back: only memory shows it)",
    ),
    Mutant(
        "pack_bit_order_reversed", "tfhash/layers.py",
        "weights = ops.convert_to_tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=\"int32\")",
        "weights = ops.convert_to_tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=\"int32\")",
        ["tests/test_layers_losses.py", "tests/test_dhn.py"],
        "least significant bit first",
    ),
    Mutant(
        "evaluate_ties_unstable", "tfhash/metrics.py",
        "ranked = np.take_along_axis(rel, rank(dist), axis=1)\n        ap.append(",
        "ranked = np.take_along_axis(rel, np.argsort(dist, axis=1), axis=1)\n        ap.append(",
        ["tests/test_metrics.py", "tests/test_cli.py::test_train_writes_the_encoder_and_run_record",
         "tests/test_cli.py::test_evaluate_prints_metrics_neighbours_and_writes_plot"],
        "the all-metrics pass ranks ties in quicksort's order, not by database index",
    ),
    Mutant(
        "publish_scores_every_entry_as_image", "tfhash/publish.py",
        '"value": round(result.scores[modality]["map"], 4)',
        '"value": round(result.scores["image"]["map"], 4)',
        ["tests/test_zoo.py::test_a_published_zoo_folder_serves_as_is"],
        "a text encoder's zoo entry carries the image->text mAP",
    ),
    Mutant(
        "server_stop_leaves_poller", "tfhash/serving/server.py",
        "        self._stopping.set()\n        if self._poller is not None:",
        "        if self._poller is not None:",
        ["tests/test_serving.py::test_stop_is_clean"],
        "stop joins the model poller without telling it to stop: it never returns",
    ),
    Mutant(
        "sign_of_zero_negative", "tfhash/layers.py",
        "return ops.where(ops.greater_equal(inputs, 0), 1.0, -1.0)",
        "return ops.where(ops.greater(inputs, 0), 1.0, -1.0)",
        ["tests/test_annealed_sign.py"],
        "sign(0) = -1 at inference, against SignPack's bit convention",
    ),
    Mutant(
        "family_ignores_term_weights", "tfhash/models/family.py",
        "weighted.append(term if weight == 1 else weight * term)",
        "weighted.append(term)",
        ["tests/test_family.py", "tests/test_dhn.py"],
        "the family's step sums its members' terms unweighted",
    ),
    # -- results of several files, concurrency (tfhash.io.transaction) ----------------
    Mutant(
        "reader_skips_unfinished_commit", "tfhash/io.py",
        "    while True:\n        recover(home)\n        with _flock(home, \"version.lock\", exclusive=False, wait=True):"
        "\n            if not os.path.exists(_beside(home, \"commit\")):",
        "    while True:\n        with _flock(home, \"version.lock\", exclusive=False, wait=True):\n            if True:",
        ["tests/test_transactions.py"],
        "a reader reads past a commit a killed writer left half done",
    ),
    Mutant(
        "commit_without_version_lock", "tfhash/io.py",
        "        with _flock(self.home, \"version.lock\", exclusive=True, wait=True):\n            try:",
        "        with contextlib.nullcontext():\n            try:",
        ["tests/test_transactions.py"],
        "a commit renames its members while a reader is between two of them",
    ),
    Mutant(
        "failed_record_keeps_temporaries", "tfhash/io.py",
        "            except BaseException:  # no record: the old version stands, and the temporaries go\n"
        "                self.discard()",
        "            except BaseException:  # no record: the old version stands, and the temporaries go\n"
        "                pass",
        ["tests/test_transactions.py"],
        "a commit whose record could not be written leaves its temporaries",
    ),
    Mutant(
        "retriever_ignores_generation", "tfhash/retrieval.py",
        "and current != source[1]:", "and False:",
        ["tests/test_transactions.py"],
        "a Retriever saved over another process's newer save: its rows lost",
    ),
    Mutant(
        "retriever_files_unchecked", "tfhash/retrieval.py",
        "            if received != expected:\n", "            if False:\n",
        ["tests/test_transactions.py"],
        "a changed ids.npy or metadata.json loads",
    ),
    Mutant(
        "run_encoder_unchecked", "tfhash/training.py",
        "            if expected is not None and sha256(file) != expected:", "            if False:",
        ["tests/test_transactions.py"],
        "a run's encoder replaced by another loads with its run.json",
    ),
    Mutant(
        "index_load_skips_recovery", "tfhash/index.py",
        "        recover(path)  # an encode", "        pass  # an encode",
        ["tests/test_transactions.py"],
        "an index read beside codes of a newer encode killed half way",
    ),
]


def repository_files(root):
    """Tracked files and untracked files git does not ignore, as in the working tree."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode().split("\0")
    return sorted({path for path in listed if path and os.path.isfile(os.path.join(root, path))})


def copy_repository(root, target):
    for path in repository_files(root):
        destination = os.path.join(target, path)
        os.makedirs(os.path.dirname(destination), exist_ok=True)
        shutil.copy2(os.path.join(root, path), destination)


def environment(copy):
    env = dict(os.environ, PYTHONPATH=copy, PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_imports_the_copy(copy, python):
    """`import tfhash` in the copy must find the copy's package, not the editable install's."""
    found = subprocess.run(
        [python, "-c", "import tfhash, os; print(os.path.realpath(tfhash.__file__))"],
        cwd=copy, env=environment(copy), check=True, capture_output=True, text=True,
    ).stdout.strip()
    expected = os.path.realpath(os.path.join(copy, "tfhash", "__init__.py"))
    if found != expected:
        sys.exit(f"import tfhash resolves to {found}, not the copy's {expected}: refusing to run")


def run_tests(copy, python, tests, timeout):
    command = [python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
    start = time.monotonic()
    try:
        result = subprocess.run(command, cwd=copy, env=environment(copy), capture_output=True, text=True,
                                timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out", time.monotonic() - start
    output = result.stdout + result.stderr
    failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, re.M)
    lines = output.strip().splitlines()
    return result.returncode, failed[0] if failed else (lines[-1] if lines else ""), time.monotonic() - start


def read_checked(copy, mutant):
    """The mutated file's source, after checking the snippet occurs exactly once."""
    path = os.path.join(copy, mutant.file)
    with open(path) as f:
        source = f.read()
    count = source.count(mutant.old)
    if count != 1:
        raise ValueError(f"{mutant.name}: the snippet occurs {count} times in {mutant.file} (expected once)")
    return path, source


def apply(copy, mutant):
    path, source = read_checked(copy, mutant)
    with open(path, "w") as f:
        f.write(source.replace(mutant.old, mutant.new))
    return path, source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--python", default=os.path.join(ROOT, ".venv", "bin", "python"))
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per pytest run")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--keep", action="store_true", help="keep the copy")
    parser.add_argument("--tests", nargs="+", help="run these tests instead of each mutant's own (to see "
                        "whether one test alone catches a mutant)")
    args = parser.parse_args(argv)
    known = {m.name: m for m in MUTANTS}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        parser.error(f"unknown mutants {unknown}; see --list")
    mutants = [known[n] for n in args.names] if args.names else MUTANTS
    if args.tests:
        mutants = [dataclasses.replace(m, tests=args.tests) for m in mutants]
    if args.list:
        for m in mutants:
            print(f"{m.name:38} {m.file:28} {' '.join(m.tests)}\n{'':38} {m.why}")
        return 0

    copy = tempfile.mkdtemp(prefix="tfhash-mutants-")
    try:
        copy_repository(ROOT, copy)
        check_imports_the_copy(copy, args.python)
        # Every snippet must be there before anything runs (the source moves on).
        for m in mutants:
            read_checked(copy, m)
        start = time.monotonic()
        if not args.no_baseline:
            tests = sorted({t for m in mutants for t in m.tests})
            code, detail, seconds = run_tests(copy, args.python, tests, args.timeout)
            print(f"baseline  {'(unmutated)':38} {seconds:7.1f} s  {' '.join(tests)}", flush=True)
            if code != 0:
                print(f"The covering tests fail without a mutant ({detail}): fix that first.")
                return 2
        caught = survived = errors = 0
        for m in mutants:
            path, source = apply(copy, m)
            try:
                code, detail, seconds = run_tests(copy, args.python, m.tests, args.timeout)
            finally:
                with open(path, "w") as f:
                    f.write(source)
            if code == 1:
                caught += 1
                status, detail = "caught", f"{detail} failed"
            elif code == 0:
                survived += 1
                status, detail = "SURVIVED", ""
            else:
                errors += 1
                status, detail = "ERROR", f"exit {code}: {detail}"
            print(f"{status:9} {m.name:38} {seconds:7.1f} s  {detail}", flush=True)
        total = time.monotonic() - start
        print(f"caught {caught} of {len(mutants)} mutants ({survived} survived, {errors} errors) in {total:.0f} s")
        return 0 if caught == len(mutants) else 1
    finally:
        if args.keep:
            print(f"copy kept at {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
