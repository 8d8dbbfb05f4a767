"""Write data/tasks/random_labels.jsonl: the negative control, a task with nothing to learn.

The inputs are the single words of three shipped word tasks; each gets the class "alpha" or
"beta" by a seeded coin (balanced), unrelated to what the word is. A model can at best reach
chance on it, so every claim graded on it must come out "not testable" or "contradicted", never
"reproduced" (tests/test_notebooks.py runs chapters 1 and 3 on it).
"""
import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "tasks"
SOURCES = ["animal_vehicle", "fruit_colour", "sentiment_words"]
SEED = 0


def main():
    words = sorted({json.loads(line)["input"] for name in SOURCES for line in (DATA / f"{name}.jsonl").open()})
    labels = ["alpha", "beta"] * (len(words) // 2)
    random.Random(SEED).shuffle(labels)
    rows = sorted(zip(labels, words))
    with (DATA / "random_labels.jsonl").open("w") as f:
        for label, word in rows:
            f.write(json.dumps({"input": word, "label": label}) + "\n")
    print(f"wrote {len(rows)} rows to {DATA / 'random_labels.jsonl'}")


if __name__ == "__main__":
    main()
