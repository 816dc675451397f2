"""The Recall@k list each dataset reports (METHOD.md §8.3).

A module of its own without torch or faiss, so that browsing run folders needs neither.
"""

RECALL_KS: dict[str, tuple[int, ...]] = {
    "cub": (1, 2, 4, 8),
    "cars": (1, 2, 4, 8),
    "sop": (1, 10, 100),
    "inshop": (1, 10, 20, 30, 50),
    "vid": (1, 5),
    "folder": (1, 2, 4, 8),
    "glyphs": (1, 2, 4, 8),
    "embeddings": (1, 2, 4, 8, 10, 100),  # eval_model.py --embeddings: every k the seed README's tables use
}
