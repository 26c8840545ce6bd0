#!/usr/bin/python3
"""Build Strata's training corpus from Debian packages only.

Sources (install with apt-get; see tools/train/README.md):
  sword-text-web      World English Bible (OSIS markup in zlib blocks)     public domain
  r-cran-janeaustenr  Jane Austen's six novels (R data, read via Rscript)  public domain texts, MIT package
  jargon-text         The Jargon File 4.4.7 (plain text)                   public domain
  fortunes           fortune-mod quotation files (selected, clean ones)   BSD fortune-mod; quotations
  linux-doc-6.1       Linux kernel documentation .rst (all dirs, capped)   GPL-2.0
  dict-gcide          GCIDE dictionary (dictd format; entries cleaned, capped) GPL-2.0+
  wordnet-base        WordNet 3.0 synsets as "words: gloss" lines          WordNet 3.0 license
  dict-foldoc         Free On-line Dictionary of Computing (dictd format)  GFDL-1.1+

Every document is normalized (NFC, ASCII quotes, right-stripped lines, wrapped prose
joined into one line per paragraph), exact-deduplicated (document and, for fortunes,
entry level), and assigned to train/val/test by a hash of its text (96/2/2), so a
document never straddles splits.

Output (under --out, default tools/train/work/corpus):
  train.jsonl val.jsonl test.jsonl   one {"source","id","text"} per line
  manifest.json                       per source: package, version, license, docs, chars per split
Also writes tools/train/MANIFEST.md (the committed, human-readable manifest).
"""
import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import struct
import subprocess
import sys
import unicodedata
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))

SOURCES = {
    "bible": ("sword-text-web", "Public domain (World English Bible)"),
    "austen": ("r-cran-janeaustenr", "Public domain texts (package: MIT)"),
    "jargon": ("jargon-text", "Public domain (Jargon File 4.4.7)"),
    "fortunes": ("fortunes", "BSD (fortune-mod); quotations of various origin"),
    "kerneldoc": ("linux-doc-6.1", "GPL-2.0 (Linux kernel documentation)"),
    "gcide": ("dict-gcide", "GPL-2.0+ (GCIDE; mostly Webster's 1913, public domain)"),
    "wordnet": ("wordnet-base", "WordNet 3.0 license (Princeton; permissive, BSD-like)"),
    "foldoc": ("dict-foldoc", "GFDL-1.1+ (Free On-line Dictionary of Computing)"),
}

_QUOTES = {"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u00a0": " ",
           "\u2002": " ", "\u2003": " ", "\u2009": " ", "\u200b": "", "\ufeff": "",
           "\r": ""}


def normalize(text):
    text = unicodedata.normalize("NFC", text)
    for a, b in _QUOTES.items():
        text = text.replace(a, b)
    text = text.replace("\t", "    ")
    lines = [l.rstrip() for l in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def join_paragraphs(text):
    """Hard-wrapped prose -> one line per paragraph (paragraphs separated by a blank line)."""
    paras = re.split(r"\n\s*\n", text)
    out = []
    for p in paras:
        p = " ".join(s.strip() for s in p.split("\n") if s.strip())
        p = re.sub(r" {2,}", " ", p)
        if p:
            out.append(p)
    return "\n\n".join(out)


def pkg_version(pkg):
    try:
        return subprocess.check_output(["dpkg-query", "-W", "-f=${Version}", pkg], text=True)
    except Exception:
        return "?"


# --- World English Bible -------------------------------------------------------------
def bible_docs():
    d = "/usr/share/sword/modules/texts/ztext/engWEB2015eb/"
    docs = []
    for testament in ("ot", "nt"):
        bzs = open(d + testament + ".bzs", "rb").read()
        z = open(d + testament + ".bzz", "rb").read()
        for b in range(len(bzs) // 12):
            off, size, _ = struct.unpack("<III", bzs[b * 12:b * 12 + 12])
            if size == 0:
                continue
            t = zlib.decompress(z[off:off + size]).decode("utf-8", "replace")
            t = re.sub(r"<note\b.*?</note>", "", t, flags=re.S)
            t = re.sub(r"<title\b[^>]*>(.*?)</title>", r"\n\n\1\n\n", t, flags=re.S)
            t = re.sub(r'<div\b[^>]*eID=[^>]*/>', "\n\n", t)
            t = re.sub(r'<l\b[^>]*eID=[^>]*/>', "\n", t)
            t = re.sub(r'<chapter\b[^>]*sID="([^"]*)"[^>]*/>', r"\n@@CHAPTER \1@@\n", t)
            t = re.sub(r"<[^>]+>", "", t)
            t = t.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&").replace("&quot;", '"')
            parts = re.split(r"\n@@CHAPTER ([^@]*)@@\n", t)
            # parts: [preamble, id1, text1, id2, text2, ...]
            chunks = [("%s-%d-pre" % (testament, b), parts[0])]
            for i in range(1, len(parts), 2):
                chunks.append((parts[i], parts[i + 1]))
            for cid, ct in chunks:
                ct = "\n\n".join(re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", ct))
                ct = normalize(ct)
                if len(ct) > 200:
                    docs.append(("bible", cid, ct))
    return docs


# --- Jane Austen ---------------------------------------------------------------------
def austen_docs(tmpdir):
    path = os.path.join(tmpdir, "austen.tsv")
    if not os.path.exists(path):
        r = ("library(janeaustenr); b <- austen_books(); "
             "write.table(data.frame(book=as.character(b$book), text=b$text), file='%s', "
             "sep='\\t', quote=FALSE, row.names=FALSE, col.names=FALSE, fileEncoding='UTF-8')" % path)
        subprocess.check_call(["Rscript", "-e", r], stdout=subprocess.DEVNULL)
    books = {}
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        book, _, text = line.partition("\t")
        books.setdefault(book, []).append(text)
    docs = []
    for book, lines in books.items():
        text = "\n".join(lines)
        # split into chapters
        pieces = re.split(r"\n(?=(?:CHAPTER|Chapter) [0-9IVXLC]+\b)", text)
        for i, p in enumerate(pieces):
            p = normalize(join_paragraphs(p))
            if len(p) > 200:
                docs.append(("austen", "%s#%d" % (book, i), p))
    return docs


# --- Jargon File ---------------------------------------------------------------------
def jargon_docs():
    text = gzip.open("/usr/share/doc/jargon-text/jargon.txt.gz", "rt", encoding="utf-8").read()
    text = text.replace("\r", "")
    # entries start with a line beginning with a colon-free headword followed by a blank? The
    # glossary is hard-wrapped with 3-space indents; chunk by paragraph groups of ~8 KB.
    paras = [join_paragraphs(p) for p in re.split(r"\n\s*\n", text)]
    paras = [p for p in paras if p and not re.fullmatch(r"[\W_]+", p)]
    docs, cur, n = [], [], 0
    for p in paras:
        cur.append(p)
        n += len(p)
        if n > 8000:
            docs.append(("jargon", "chunk%d" % len(docs), normalize("\n\n".join(cur))))
            cur, n = [], 0
    if cur:
        docs.append(("jargon", "chunk%d" % len(docs), normalize("\n\n".join(cur))))
    return docs


# --- fortunes ------------------------------------------------------------------------
FORTUNE_FILES = ["computers", "cookie", "debian", "definitions", "education", "food", "fortunes",
                 "goedel", "humorists", "kids", "law", "linux", "linuxcookie", "literature", "love",
                 "magic", "medicine", "miscellaneous", "news", "paradoxum", "people", "perl",
                 "pets", "platitudes", "politics", "pratchett", "riddles", "science",
                 "songs-poems", "sports", "startrek", "tao", "wisdom", "work", "zippy"]


def fortune_docs():
    seen = set()
    docs = []
    for name in FORTUNE_FILES:
        path = "/usr/share/games/fortunes/%s.u8" % name
        if not os.path.exists(path):
            path = "/usr/share/games/fortunes/%s" % name
            if not os.path.exists(path):
                continue
        raw = open(path, "rb").read().decode("utf-8", "replace")
        entries = [normalize(e) for e in re.split(r"\n%\n", raw)]
        group = []
        for e in entries:
            key = re.sub(r"\s+", " ", e).lower()
            if len(e) < 20 or key in seen:
                continue
            seen.add(key)
            group.append(e)
            if len(group) == 40:
                docs.append(("fortunes", "%s#%d" % (name, len(docs)), "\n\n".join(group)))
                group = []
        if group:
            docs.append(("fortunes", "%s#%d" % (name, len(docs)), "\n\n".join(group)))
    return docs


# --- kernel docs ---------------------------------------------------------------------
KERNEL_DIRS = ["admin-guide", "process", "kernel-hacking", "filesystems", "core-api", "mm",
               "scheduler", "locking", "dev-tools", "doc-guide", "block", "timers", "power"]


def kernel_docs(cap_chars, all_dirs=True):
    root = "/usr/share/doc/linux-doc-6.1/Documentation/"
    files = []
    for d in KERNEL_DIRS:
        files += sorted(glob.glob(root + d + "/**/*.rst.gz", recursive=True))
    if all_dirs:  # then the rest of Documentation/ (translations excluded: English only)
        rest = sorted(set(glob.glob(root + "**/*.rst.gz", recursive=True)) - set(files))
        rest = [f for f in rest if not f[len(root):].startswith("translations/")]
        rest.sort(key=lambda f: hashlib.sha1(f.encode()).hexdigest())
        files.sort(key=lambda f: hashlib.sha1(f.encode()).hexdigest())
        files += rest
    else:
        files.sort(key=lambda f: hashlib.sha1(f.encode()).hexdigest())
    docs, total = [], 0
    for f in files:
        t = gzip.open(f, "rt", encoding="utf-8", errors="replace").read()
        t = re.sub(r"^\.\. SPDX-License-Identifier:.*\n", "", t)
        t = normalize(t)
        if len(t) < 300:
            continue
        docs.append(("kerneldoc", f[len(root):], t))
        total += len(t)
        if total > cap_chars:
            break
    return docs


# --- dictd dictionaries (GCIDE, FOLDOC) -----------------------------------------------
def _dictd_entries(path):
    """Entries of a dictd .dict.dz (gzip-compatible): blocks starting at an unindented line."""
    text = gzip.open(path, "rt", encoding="utf-8", errors="replace").read()
    entries, cur = [], []
    for line in text.split("\n"):
        if line and not line[0].isspace() and (not cur or cur[-1].strip() == ""):
            if cur:
                entries.append("\n".join(cur))
            cur = [line]
        else:
            cur.append(line)
    if cur:
        entries.append("\n".join(cur))
    # drop dictd's own header entries (00-database-*)
    return [e for e in entries if not e.startswith("00") and "00-database" not in e[:40]]


def _clean_dict_entry(e, gcide):
    e = e.replace("\r", "")
    if gcide:
        e = re.sub(r"\\[^\\\n]{0,80}\\", "", e)             # \Pro*nun"ci*a`tion\ markup
        e = re.sub(r"^\s*\[(?:1913 Webster|Webster 1913 Suppl\.|WordNet 1\.5|PJC|[A-Z][^\]]{0,30})\]\s*$", "",
                   e, flags=re.M)                           # source tags on their own line
    if gcide:
        e = re.sub(r" ?\((?=[^()\n]*\[[a-zA-Z]*[=^~`.:\-])[^()\n]{1,60}\)", "", e)  # (pro*nun"ci[=a]tion)
        e = re.sub(r'\[(?:[=^~`:\'"]([a-zA-Z]{1,2})|([a-zA-Z]{1,2})[=^~`:\'"])\]', r"\1\2", e)   # [=o] [e^] diacritics
    e = re.sub(r"\{([^{}]*)\}", r"\1", e)                   # {cross references}
    e = re.sub(r"\{([^{}]*)\}", r"\1", e)
    e = re.sub(r" {2,}", " ", e)
    e = normalize(join_paragraphs(e))
    e = re.sub(r" ,", ",", e)
    return e


def dict_docs(source, path, cap_chars, group=60):
    gcide = source == "gcide"
    entries = []
    for e in _dictd_entries(path):
        e = _clean_dict_entry(e, gcide)
        if len(e) >= 30:
            entries.append(e)
    # documents of `group` consecutive entries (alphabetical context); capped by a hash sample of docs
    docs = []
    for i in range(0, len(entries), group):
        docs.append((source, "%s#%d" % (source, i // group), "\n\n".join(entries[i:i + group])))
    docs.sort(key=lambda d: hashlib.sha1(d[1].encode()).hexdigest())
    out, total = [], 0
    for d in docs:
        if total > cap_chars:
            break
        out.append(d)
        total += len(d[2])
    return out


# --- WordNet glosses -----------------------------------------------------------------
def wordnet_docs(cap_chars, group=200):
    pos_name = {"n": "noun", "v": "verb", "a": "adjective", "s": "adjective", "r": "adverb"}
    lines = []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in open("/usr/share/wordnet/data." + pos, encoding="utf-8", errors="replace"):
            if line.startswith("  ") or "|" not in line:
                continue  # license header
            head, _, gloss = line.partition("|")
            f = head.split()
            ss_type, w_cnt = f[2], int(f[3], 16)
            words = [f[4 + 2 * k].replace("_", " ") for k in range(w_cnt)]
            words = [re.sub(r"\([a-z]+\)$", "", w) for w in words]  # adjective markers like (a)
            gloss = gloss.strip()
            if not gloss:
                continue
            lines.append("%s (%s): %s" % (", ".join(words), pos_name.get(ss_type, ss_type), gloss))
    docs = []
    for i in range(0, len(lines), group):
        docs.append(("wordnet", "wordnet#%d" % (i // group), normalize("\n".join(lines[i:i + group]))))
    docs.sort(key=lambda d: hashlib.sha1(d[1].encode()).hexdigest())
    out, total = [], 0
    for d in docs:
        if total > cap_chars:
            break
        out.append(d)
        total += len(d[2])
    return out


def split_of(text):
    h = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 100
    return "val" if h < 2 else ("test" if h < 4 else "train")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(HERE, "work", "corpus"))
    ap.add_argument("--kernel-cap", type=int, default=18_000_000, help="chars of kernel docs")
    ap.add_argument("--gcide-cap", type=int, default=18_000_000, help="chars of GCIDE entries")
    ap.add_argument("--wordnet-cap", type=int, default=10_000_000, help="chars of WordNet glosses")
    ap.add_argument("--foldoc-cap", type=int, default=8_000_000, help="chars of FOLDOC entries")
    ap.add_argument("--v0", action="store_true", help="only the 5 sources of model version 0 (kernel cap 3M)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    all_docs = []
    for name, fn in [("bible", bible_docs), ("austen", lambda: austen_docs(args.out)),
                     ("jargon", jargon_docs), ("fortunes", fortune_docs),
                     ("kerneldoc", lambda: kernel_docs(3_000_000, False) if args.v0 else kernel_docs(args.kernel_cap)),
                     ("gcide", lambda: [] if args.v0 else dict_docs("gcide", "/usr/share/dictd/gcide.dict.dz", args.gcide_cap)),
                     ("wordnet", lambda: [] if args.v0 else wordnet_docs(args.wordnet_cap)),
                     ("foldoc", lambda: [] if args.v0 else dict_docs("foldoc", "/usr/share/dictd/foldoc.dict.dz", args.foldoc_cap))]:
        d = fn()
        print("%-10s %5d docs %9d chars" % (name, len(d), sum(len(x[2]) for x in d)), file=sys.stderr)
        all_docs += d
    seen = set()
    outs = {s: open(os.path.join(args.out, s + ".jsonl"), "w", encoding="utf-8") for s in ("train", "val", "test")}
    stats = {}
    for src, did, text in all_docs:
        h = hashlib.sha256(text.encode()).hexdigest()
        if h in seen:
            continue
        seen.add(h)
        sp = split_of(text)
        outs[sp].write(json.dumps({"source": src, "id": did, "text": text}, ensure_ascii=False) + "\n")
        st = stats.setdefault(src, {"docs": 0, "train_chars": 0, "val_chars": 0, "test_chars": 0})
        st["docs"] += 1
        st[sp + "_chars"] += len(text)
    for f in outs.values():
        f.close()
    manifest = {}
    for src, st in stats.items():
        pkg, lic = SOURCES[src]
        manifest[src] = dict(package=pkg, version=pkg_version(pkg), license=lic, **st)
    json.dump(manifest, open(os.path.join(args.out, "manifest.json"), "w"), indent=1)
    with open(os.path.join(HERE, "MANIFEST.md"), "w") as f:
        f.write("# Training corpus manifest\n\nGenerated by `tools/train/corpus.py` from Debian packages only "
                "(nothing downloaded from elsewhere). Split by document hash: 96% train, 2% val, 2% test.\n\n")
        f.write("| source | Debian package | version | license | docs | train chars | val chars | test chars |\n")
        f.write("|---|---|---|---|---:|---:|---:|---:|\n")
        tot = [0, 0, 0, 0]
        for src, m in manifest.items():
            f.write("| %s | %s | %s | %s | %d | %d | %d | %d |\n" % (src, m["package"], m["version"], m["license"],
                    m["docs"], m["train_chars"], m["val_chars"], m["test_chars"]))
            tot = [a + b for a, b in zip(tot, [m["docs"], m["train_chars"], m["val_chars"], m["test_chars"]])]
        f.write("| **total** | | | | %d | %d | %d | %d |\n" % tuple(tot))
        f.write("\nNormalization: NFC, curly quotes and odd spaces to ASCII, tabs to 4 spaces, lines right-stripped, "
                "hard-wrapped prose (Austen, Jargon File) joined to one line per paragraph, OSIS markup and "
                "footnotes stripped from the Bible (one document per chapter), fortunes deduplicated per entry "
                "and grouped 40 per document (files art, ascii-art, drugs, ethnic, men-women, translate-me "
                "excluded), kernel docs (English, translations/ excluded) from %s first, then the rest of Documentation/, "
                "capped by size; GCIDE (dictd format) entries with pronunciation markup, diacritic codes and source "
                "tags stripped, 60 entries per document, capped by a hash sample of documents; WordNet 3.0 synsets as "
                "'words (pos): gloss' lines, 200 per document; FOLDOC entries 60 per document.\n" % ", ".join(KERNEL_DIRS))
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
