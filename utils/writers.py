"""What `test` and `generate` write: Kaggle's Dogs vs. Cats submission (`id,label` with label =
P(dog), one row per test image), any table of rows (`write_csv`) and text (`write_text`),
always atomically."""
import csv
import io

from utils.core.io import atomic_open


def write_submission(path, ids, dog_probabilities, clip=0.0):
    """Write rows sorted by numeric id, P(dog) clipped into [clip, 1 - clip]; atomic.

    Clipping exists because Kaggle scores log loss: one confident mistake (p=0 for a dog)
    costs -log(1e-15) ~ 34.5 on its own, so a small clip trades a little loss on easy
    images for a bounded loss on wrong ones. Returns the number of rows written.
    """
    rows = sorted(zip(ids, dog_probabilities), key=lambda row: int(row[0]))
    return write_csv(path, ["id", "label"],
                     [(int(image_id), f"{min(max(float(probability), clip), 1.0 - clip):.6f}") for image_id, probability in rows])


def write_csv(path, header, rows):
    """Write `header` and `rows` as csv (RFC 4180 quoting, \\n line ends, UTF-8), atomically:
    the file appears complete or not at all. Returns the number of rows written."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        handle.write(text.getvalue())
    return len(rows)


def write_text(path, text):
    """Write `text` (UTF-8) atomically."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
