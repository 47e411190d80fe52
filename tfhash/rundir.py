"""The run directory's file names (stdlib only, so every layer can read them):

    run.json                the full recipe, scores, history, versions
    image_encoder.keras     the image encoder
    text_encoder.keras      the text encoder, for image-text methods
    split.npz               a run on the user's own images (`tfhash.data.from_path`):
                            its query/train/database split, so `evaluate` scores it again
"""

import os

RUN_FILE = "run.json"
ENCODER_FILE = "{modality}_encoder.keras"
SPLIT_FILE = "split.npz"


def encoder_file(run_dir, modality="image"):
    """The path of a run directory's `modality` encoder; a clear error if absent."""
    file = os.path.join(run_dir, ENCODER_FILE.format(modality=modality))
    if not os.path.exists(file):
        found = sorted(f for f in os.listdir(run_dir) if f.endswith(".keras"))
        raise FileNotFoundError(f"No {modality} encoder in the run directory {run_dir}: expected "
                                f"{os.path.basename(file)}. Received: {found or 'no .keras file'}")
    return file
