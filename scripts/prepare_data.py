"""Turns the data wheels fetched by `scripts/fetch.sh data` into files `loft train` reads (Python standard library
only; run by fetch.sh, not by loft):

  ko-law/*.txt      the Korean constitution and ten Korean bills from konlpy's corpora (CPT text; one document
                    per file, split into paragraphs by `data.split_paragraphs = true`)
  champ.jsonl       270 competition maths problems with step-by-step solutions (Alpaca records:
                    instruction / input / output), from champ-dataset (MIT)
  chitchat.jsonl    7,168 small-talk conversations as chat `messages` (the first speaker is the user), from
                    chitchat-dataset (MIT)
  ift.jsonl         the demo's instruction set (Alpaca records): the 270 maths problems above, and 270 chats whose
                    first message is a question, answered in a sentence (short answers teach the model to stop)

usage: prepare_data.py KONLPY_WHL CHAMP_WHL CHITCHAT_WHL OUT_DIR
"""

import json
import os
import sys
import zipfile


def ko_law(whl: str, out: str) -> None:
    os.makedirs(os.path.join(out, "ko-law"), exist_ok=True)
    with zipfile.ZipFile(whl) as z:
        for name in sorted(z.namelist()):
            if name.startswith("konlpy/data/corpus/kolaw/") or name.startswith("konlpy/data/corpus/kobill/"):
                if not name.endswith(".txt"):
                    continue
                corpus = name.split("/")[3]
                text = z.read(name).decode("utf-8")
                dst = os.path.join(out, "ko-law", f"{corpus}-{os.path.basename(name)}")
                with open(dst, "w", encoding="utf-8") as f:
                    f.write(text)


def champ(whl: str, out: str) -> None:
    with zipfile.ZipFile(whl) as z:
        data = json.loads(z.read("champ_dataset/dataset_files/v0.json"))
    with open(os.path.join(out, "champ.jsonl"), "w", encoding="utf-8") as f:
        for p in data["problems"].values():
            steps = [f"{i}. {s['_text']}" for i, s in enumerate(p["solution"]["steps"], 1)]
            output = "Step-wise solution:\n" + "\n".join(steps) + f"\nAnswer: {p['_answer']}"
            rec = {"instruction": p["_text"], "input": "", "output": output, "category": p["category"]}
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def chitchat(whl: str, out: str) -> None:
    with zipfile.ZipFile(whl) as z:
        data = json.loads(z.read("chitchat_dataset/dataset.json"))
    with open(os.path.join(out, "chitchat.jsonl"), "w", encoding="utf-8") as f:
        for key in sorted(data):
            turns = data[key]["messages"]  # a list of turns, each a list of one sender's messages
            messages = []
            for i, turn in enumerate(turns):
                text = "\n".join(m["text"].strip() for m in turn if m["text"].strip())
                if text:
                    messages.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
            if len(messages) >= 2 and messages[-1]["role"] == "user":
                messages.pop()
            if len(messages) >= 2:
                f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def ift_mix(out: str) -> None:
    records = [json.loads(line) for line in open(os.path.join(out, "champ.jsonl"), encoding="utf-8")]
    maths = len(records)
    for line in open(os.path.join(out, "chitchat.jsonl"), encoding="utf-8"):
        if len(records) == 2 * maths:
            break
        messages = json.loads(line)["messages"]
        question, answer = messages[0]["content"].strip(), messages[1]["content"].strip()
        answer = " ".join(answer.split("\n"))  # one speaker's messages in a row, as one reply
        if question.endswith("?") and len(question.split()) >= 4 and "\n" not in question and 20 <= len(answer) <= 300:
            records.append({"instruction": question, "input": "", "output": answer, "category": "chat"})
    with open(os.path.join(out, "ift.jsonl"), "w", encoding="utf-8") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")


def main() -> None:
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    konlpy_whl, champ_whl, chitchat_whl, out = sys.argv[1:]
    os.makedirs(out, exist_ok=True)
    ko_law(konlpy_whl, out)
    champ(champ_whl, out)
    chitchat(chitchat_whl, out)
    ift_mix(out)


if __name__ == "__main__":
    main()
