"""A vocabulary safe to print on anyone's photo: no word of a list of offensive, protected-
attribute, violence, drug and sexual terms and words that judge or label a person (written
here, independently of the shipped list) survives the default selection from the real
GloVe and MiniLM sources; the readout of an old codebook that holds such words prints none
of them; the manifest records each removed word's reason; the generator of the list on
small WordNet files in the real format; and the shipped list's format."""

import dataclasses
import gzip
import json
import os
import re

import numpy as np
import pytest

from sweet_jax.codebook import artifact, build, exclusion_rules, exclusions, pos, sources
from sweet_jax.codebook import wordnet
from sweet_jax.codebook.artifact import WordGroup
from sweet_jax.quantizers.mlc import LanguageQuantizer
from sweet_jax.readout import words as readout

# Words no token readout may print. The first line: what a user saw on their photos; from
# "guilty" on, words that judge or label a person (a readout of a held-out portrait printed
# "guilty", "crime", "bald", "dishonest", "communist", "petty"); the last lines, what the
# main job's held-out readouts and a reading of the CPU vocabulary still showed.
UNSAFE = """
douche nazi crap ass suicidal naked homosexual atheist feminist female
fuck shit bitch bastard cunt dick cock pussy whore slut porn sex sexy nude nudity erotic
orgasm penis vagina nipple prostitute stripper horny rape rapist masturbate
gay lesbian queer bisexual transgender heterosexual
male woman man girl boy lady gentleman wife husband mother father feminine masculine
muslim islamic christian jewish jew catholic protestant hindu buddhist religious priest
nun pope bible god atheism
american african asian european chinese japanese mexican indian arab german french
russian hispanic latino negro nigger ethnic racial caucasian
blind deaf cripple crippled retard retarded insane lunatic autistic disabled handicapped
midget idiot moron imbecile psychotic schizophrenic
kill killer murder murderer suicide gun rifle pistol bomb grenade sword weapon terrorist
massacre genocide corpse dead death shoot slaughter torture war
cocaine heroin marijuana meth junkie addict opium narcotic drug dope
guilty crime criminal prisoner prison jail thief theft fraud robbery arrest punishment convict
felon suspect communist socialist fascist liberal conservative republican democrat capitalist
marxist ideology partisan bald fat obese overweight skinny ugly hideous unattractive chubby
scrawny elderly senile geriatric stupid dumb idiotic foolish ignorant lazy evil wicked cruel
corrupt dishonest deceitful greedy selfish arrogant cowardly petty immoral vile liar cheat
hypocrite coward bigot racist sexist homophobic victim loser poverty homeless unemployed slave
gorilla monkey ape savage pregnant
race gender teen teenage foreign alien adult intimate mental delusional deadly lethal holy
divine spiritual secular righteous enemy blood hate insult offensive inferior worthless
useless laughable ridiculous sketchy nasty dirty trash beast suspicious bust aggressive
""".split()
# How many of UNSAFE each source's default selection has without the list.
MIN_CAUGHT = {"glove": 200, "minilm": 165}
# Everyday visual words that must stay, and the neighbours of the judgment words above:
# words that describe things as often as people, generic evaluatives, and the words that
# the rules catch only through a quirk of WordNet (exclusion_rules.KEPT).
SAFE = ("red white black blue green yellow cold warm dog horse cat tree house car stone "
        "wood metal glass cloud rain snow water bright dark round soft rough "
        "old young tall short big small heavy thin slim lean plain grey ancient senior "
        "mature sharp hard wet dry wild poor bad good wrong honest brave kind smart "
        "clever beautiful pretty cute strong weak fast slow clean messy silly absurd funny "
        "weird strange critical tricky party police officer doctor judge lawyer court "
        "political democracy government runner mug hood trailer smoothie junior pepper shell defense engagement").split()


# ---------------------------------------------------------------------------------------
# The default selection from the real sources.


@pytest.fixture(scope="module")
def lexicon() -> pos.PosLexicon:
  return pos.load_pos_lexicon()


@pytest.mark.parametrize("source", ["glove", "minilm"])
def test_no_unsafe_word_survives_the_default_selection(lexicon, source):
  known = frozenset().union(*lexicon.pos_lists.values())
  vocab, _ = sources.load_embeddings(source, keep=known)
  options = dict(sizes=build.DEFAULT_SIZES, min_log_prob=build.DEFAULT_MIN_LOG_PROB)
  selected, _ = pos.select_words(vocab, lexicon, excluded=exclusions.load(), **options)
  words = {w for ws in selected.values() for w in ws}
  survivors = sorted(w for w in words if w in UNSAFE or lexicon.lemma_of.get(w, w) in UNSAFE)
  assert not survivors, f"{source}: {survivors}"
  # The test bites: without the list, most of these words are selected; everyday ones stay.
  unfiltered, _ = pos.select_words(vocab, lexicon, excluded=(), **options)
  unfiltered_words = {w for ws in unfiltered.values() for w in ws}
  assert len(set(UNSAFE) & unfiltered_words) >= MIN_CAUGHT[source]
  lost = sorted(w for w in SAFE if w in unfiltered_words and w not in words)
  assert not lost, lost


def test_default_list_keeps_everyday_words():
  default = exclusions.load()
  assert not set(SAFE) & set(default), sorted(set(SAFE) & set(default))
  assert set(UNSAFE) <= set(default), sorted(set(UNSAFE) - set(default))


# ---------------------------------------------------------------------------------------
# The readout.


def word_group(words: list[str], num_first: int, user_exclusions: bool = False) -> WordGroup:
  n = len(words)
  nodes = np.arange(n, dtype=np.int32)
  return WordGroup(name="spatial", words=np.array(words), vectors=np.eye(n, 4, dtype=np.float32),
                   senders=nodes, receivers=nodes, edge_weights=np.ones(n, np.float32),
                   num_first=num_first, user_exclusions=user_exclusions)


class WordsModel:
  """The part of a tokenizer the readout uses: an MLC quantizer over one word group."""

  has_words = True

  def __init__(self, group: WordGroup):
    self.quantizer = LanguageQuantizer(group, code_dim=8)

  def quantizers(self):
    return {"spatial": self.quantizer}


OLD_ADJECTIVES = ["red", "naked", "gay", "jewish", "suicidal", "soft"]
OLD_NOUNS = ["dog", "nazi", "nazis", "crap", "ass", "douche", "atheist", "feminist", "tree"]


def save_old_codebook(directory, user_list: bool = False) -> str:
  """A codebook as builder version 2 left it (its manifest names no list kind) holding
  unsafe words; with `user_list`, one whose manifest says the user chose the list."""
  words = OLD_ADJECTIVES + OLD_NOUNS
  group = word_group(words, len(OLD_ADJECTIVES))
  temporal = dataclasses.replace(word_group(["quickly", "slowly", "run", "eat"], 2),
                                 name="temporal")
  excluded = {"path": "/somewhere/excluded_words.txt", "count": 58, "sha256": "0" * 64}
  if user_list:
    excluded = dict(excluded, list="user", removed={}, removed_per_reason={})
  manifest = {"builder_version": 3 if user_list else 2, "filters": {"excluded_words": excluded}}
  artifact.save(str(directory), group, temporal, manifest)
  return str(directory)


def test_readout_of_an_old_codebook_prints_no_unsafe_word(tmp_path):
  book = artifact.load(save_old_codebook(tmp_path / "old"))
  assert not book.spatial.user_exclusions
  n_adj, n_noun = len(OLD_ADJECTIVES), len(OLD_NOUNS)
  # Every pair of adjectives with every noun: all the words the codebook can print.
  indices = np.array([[[a, (a + 1) % n_adj, n] for a in range(n_adj) for n in range(n_noun)]])
  tokens = readout.token_words(WordsModel(book.spatial), indices)[0]
  printed = {w for t in tokens for w in re.split(r"[+ ]", t)}
  assert printed == {"red", "soft", "dog", "tree", readout.WITHHELD}
  assert tokens[0] == f"red+{readout.WITHHELD} dog"
  table = readout.words_markdown(WordsModel(book.spatial), indices)
  assert not {w for w in re.findall(r"[a-z]+", table)} & set(UNSAFE + ["nazis"])


def test_readout_honours_a_users_own_list(tmp_path):
  book = artifact.load(save_old_codebook(tmp_path / "user", user_list=True))
  assert book.spatial.user_exclusions
  indices = np.array([[[1, 2, 1]]])
  assert readout.token_words(WordsModel(book.spatial), indices) == [["naked+gay nazi"]]


# ---------------------------------------------------------------------------------------
# The manifest.

FIXTURE_POS = {"adj": ["red", "naked", "blue", "suicidal", "soft"],
               "noun": ["dog", "nazi", "tree", "crap", "atheist", "whore", "house"],
               "adv": ["quickly", "slowly"], "verb": ["run", "kill", "eat"]}


@pytest.fixture
def pos_dir(tmp_path) -> str:
  words = sorted({w for ws in FIXTURE_POS.values() for w in ws})
  probs = dict.fromkeys(words, -8.0) | {"whore": -19.0}
  directory = tmp_path / "pos"
  os.makedirs(directory)
  for name, data in (("en_lemma_index", FIXTURE_POS), ("en_lemma_lookup", {"nazis": "nazi"}),
                     ("en_lexeme_prob", probs)):
    with gzip.open(directory / f"{name}.json.gz", "wt") as f:
      json.dump(data, f)
  vectors = np.random.default_rng(0).normal(size=(len(words), 4)).astype(np.float32)
  np.savez(tmp_path / "emb.npz", words=np.array(words), vectors=vectors)
  return str(directory)


def build_fixture(tmp_path, pos_dir, **options):
  return build.build_codebook(str(tmp_path / "cb"), source="npz",
                              embeddings=str(tmp_path / "emb.npz"), pos_dir=pos_dir,
                              sizes=dict.fromkeys(pos.POS_KEYS, 10), min_log_prob=-15.0, knn=2,
                              **options)


def test_manifest_records_each_removed_word_and_its_reason(tmp_path, pos_dir):
  codebook = build_fixture(tmp_path, pos_dir)
  record = artifact.load(str(tmp_path / "cb")).manifest["filters"]["excluded_words"]
  default = exclusions.load()
  # "whore" is too rare to be a candidate anyway: it removed nothing, so it is not recorded.
  expected = {w: default[w] for w in ("atheist", "crap", "kill", "naked", "nazi", "suicidal")}
  assert record["removed"] == expected
  assert set(expected.values()) <= set(exclusion_rules.REASONS)
  assert record["removed_per_reason"] == {r: list(expected.values()).count(r)
                                          for r in sorted(set(expected.values()))}
  assert record["list"] == "default" and record["count"] == len(default)
  assert record["sha256"] == sources.file_sha256(exclusions.DEFAULT_FILE)
  assert not set(codebook.spatial.words) & set(expected) and not codebook.spatial.user_exclusions
  assert "excluded (default list): 6 candidate words" in build.format_report(codebook)


def test_a_users_plain_list_replaces_the_default(tmp_path, pos_dir):
  mine = tmp_path / "mine.txt"
  mine.write_text("# my own list\ndog\nNaked\n")
  codebook = build_fixture(tmp_path, pos_dir, exclude=str(mine))
  record = codebook.manifest["filters"]["excluded_words"]
  assert record["list"] == "user" and record["removed"] == {"dog": "listed", "naked": "listed"}
  assert "crap" in codebook.spatial.words and codebook.spatial.user_exclusions
  assert artifact.load(str(tmp_path / "cb")).spatial.user_exclusions
  none = build_fixture(tmp_path, pos_dir, exclude=None).manifest["filters"]["excluded_words"]
  assert none["list"] == "none" and none["removed"] == {}
  bad = tmp_path / "bad.txt"
  bad.write_text("dog\ntwo words\n")
  with pytest.raises(ValueError, match=r"bad\.txt:2: expected one word, or word<TAB>reason"):
    exclusions.load(str(bad))
  bad.write_bytes(b"dog\n\xff\n")
  with pytest.raises(ValueError, match=r"bad\.txt is not UTF-8 text .*save it as UTF-8"):
    exclusions.load(str(bad))


def test_unsafe_words_by_lemma():
  """spaCy's lemma table first ("guns"); a plural it does not know loses its -s ("nazis")."""
  lemma_of = {"guns": "gun", "dogs": "dog", "glasses": "glass"}
  words = ["nazis", "guns", "dogs", "red", "bus", "glasses", "gun"]
  assert exclusions.unsafe_words(words, {"nazi": "x", "gun": "y", "bu": "z", "glasse": "w"},
                                 lemma_of) == {"nazis", "guns", "gun"}


# ---------------------------------------------------------------------------------------
# The generator, on WordNet files in the real format.

# key, ss_type, lex_filenum, words, pointers (symbol, key, source/target), gloss. Listed
# in sense order: a word's senses are numbered by their order here.
SYNSETS = [
    ("weapon", "n", 6, ["weapon", "arm"], [("~", "gun", "0000")], "an instrument of fighting"),
    ("gun", "n", 6, ["gun"], [("@", "weapon", "0000")], "a weapon that discharges a missile"),
    ("arm", "n", 8, ["arm"], [], "a human limb"),
    ("violence", "n", 4, ["violence"], [("+", "violent", "0101")], "an act of aggression"),
    ("inhabitant", "n", 18, ["inhabitant"], [("~", "american", "0000"), ("~", "villager", "0000")],
     "a person who inhabits a particular place"),
    ("american", "n", 18, ["American"], [("@", "inhabitant", "0000")], "a native of the US"),
    ("villager", "n", 18, ["villager"], [("@", "inhabitant", "0000")], "one living in a village"),
    ("country", "n", 15, ["country"], [("~i", "france", "0000")], "the territory of a nation"),
    ("france", "n", 15, ["France"], [("@i", "country", "0000")], "a republic in western Europe"),
    ("slurs", "n", 10, ["ethnic_slur"], [], "a slur on someone's race or language"),
    ("obscenity", "n", 10, ["obscenity"], [], "an offensive or indecent word or phrase"),
    ("belittling", "n", 10, ["disparagement"], [], "a communication that belittles somebody"),
    ("slur", "n", 18, ["spade", "tom"], [(";u", "slurs", "0100")], "a term for a person"),
    ("spade_tool", "n", 6, ["spade"], [], "a sturdy digging tool"),
    ("runt", "n", 18, ["runt", "shrimp"], [], "disparaging terms for small people"),
    ("shrimp", "n", 5, ["shrimp"], [], "small slender-bodied marine crustaceans"),
    ("french", "a", 1, ["French"], [("\\", "france", "0101")], "of or relating to France"),
    ("violent", "a", 0, ["violent"], [("+", "violence", "0101")], "acting with violence"),
    ("kill", "v", 35, ["kill"], [], "cause to die"),
    ("dishonest", "a", 0, ["dishonest"], [("&", "deceitful", "0000")], "deceptive"),
    ("deceitful", "s", 0, ["deceitful", "fraudulent"], [("&", "dishonest", "0000")],
     "intended to deceive"),
    ("unimportant", "a", 0, ["unimportant"],
     [("&", "petty", "0000"), ("&", "trivial", "0000")], "not important"),
    ("petty", "s", 0, ["petty"], [("&", "unimportant", "0000")], "small-minded"),
    ("trivial", "s", 0, ["trivial"], [("&", "unimportant", "0000")], "of little importance"),
]
TAG_COUNTS = {"arm%1:08:00::": 10, "arm%1:06:00::": 1, "shrimp%1:05:00::": 3}
POS_NAMES = {"n": "noun", "v": "verb", "a": "adj", "r": "adv"}


def write_wordnet(directory) -> str:
  """data.*, index.* and cntlist.rev as WordNet 3.0 writes them (offsets are byte offsets;
  a verb line ends with its sentence frames)."""
  os.makedirs(directory)
  license_lines = ["  1 This software and database is being provided to you, the LICENSEE, by  ",
                   "  2 WordNet 3.0 Copyright 2006 by Princeton University.  All rights  "]
  offsets, lines = {}, {pos: list(license_lines) for pos in POS_NAMES}
  sizes = {pos: sum(len(line) + 1 for line in license_lines) for pos in POS_NAMES}
  for key, ss_type, _, words, pointers, gloss in SYNSETS:  # fixed widths: lengths first
    pos = "a" if ss_type == "s" else ss_type
    offsets[key] = (pos, sizes[pos])
    sizes[pos] += len(_data_line(0, ss_type, 0, words, pointers, gloss, {})) + 1
  for key, ss_type, lex_filenum, words, pointers, gloss in SYNSETS:
    pos, offset = offsets[key]
    lines[pos].append(_data_line(offset, ss_type, lex_filenum, words, pointers, gloss, offsets))
  senses = {}
  for key, ss_type, _, words, _, _ in SYNSETS:
    for word in words:
      senses.setdefault((word.lower(), offsets[key][0]), []).append(offsets[key][1])
  for pos, name in POS_NAMES.items():
    (directory / f"data.{name}").write_text("\n".join(lines[pos]) + "\n")
    index = [f"{lemma} {p} {len(o)} 0 {len(o)} 0 " + " ".join(f"{x:08d}" for x in o) + "  "
             for (lemma, p), o in sorted(senses.items()) if p == pos]
    (directory / f"index.{name}").write_text("\n".join(license_lines + index) + "\n")
  (directory / "cntlist.rev").write_text("".join(f"{k} 1 {c}\n" for k, c in TAG_COUNTS.items()))
  return str(directory)


def _data_line(offset, ss_type, lex_filenum, words, pointers, gloss, offsets) -> str:
  ptrs = " ".join(f"{sym} {offsets.get(key, ('n', 0))[1]:08d} {offsets.get(key, ('n', 0))[0]} "
                  f"{st}" for sym, key, st in pointers)
  frames = " 01 + 02 00" if ss_type == "v" else ""
  return (f"{offset:08d} {lex_filenum:02d} {ss_type} {len(words):02x} "
          + " ".join(f"{w} 0" for w in words) + f" {len(pointers):03d} {ptrs}".rstrip()
          + f"{frames} | {gloss}  ")


def test_generator_on_small_wordnet_files(tmp_path, monkeypatch):
  wn_dir = write_wordnet(tmp_path / "wordnet")
  wn = wordnet.read(wn_dir)
  assert wn.version == "3.0" and wn.synset("arm.n.02").words == ("arm",)
  assert wn.tag_counts[("arm", wn.synset("arm.n.02").id)] == 10
  published = tmp_path / "published.tsv"
  published.write_text("# two lists\ncrap\tlist-a\nass\tlist-a,list-b\nx-rated\tlist-b\n")
  rules = exclusion_rules
  monkeypatch.setattr(rules, "CATEGORIES", (
      rules.Category("violence", ("weapon.n.01", "violence.n.01", "kill.v.01")),
      rules.Category("ethnicity_nationality", (), peoples=("inhabitant.n.01",),
                     pertains_to=("country.n.01",)),
      rules.Category("character", (), clusters=("dishonest.a.01", "petty.a.01"))))
  monkeypatch.setattr(rules, "OFFENSIVE_DOMAINS", ("obscenity.n.01", "disparagement.n.01"))
  monkeypatch.setattr(rules, "ADDED", {"cripple": ("disability", "a slur")})
  monkeypatch.setattr(rules, "KEPT", {"violent": "for the test"})
  out = tmp_path / "excluded.tsv"
  assert rules.main([f"--wordnet_dir={wn_dir}", f"--published={published}",
                     f"--out={out}"]) == 0
  lines = [line.split("\t") for line in out.read_text().splitlines() if not line.startswith("#")]
  assert {w: r for w, r, _ in lines} == {
      "ass": "profanity", "crap": "profanity", "cripple": "disability",
      "spade": "slur_or_vulgar",  # an ethnic slur, whatever its common sense; not "tom"
      "runt": "slur_or_vulgar",  # a disparaging note in the gloss; "shrimp" reads as food
      "weapon": "violence", "gun": "violence", "violence": "violence", "kill": "violence",
      "american": "ethnicity_nationality",  # a people; not "villager"
      "french": "ethnicity_nationality",  # an adjective of a country; "arm" reads as a limb
      "dishonest": "character", "deceitful": "character", "fraudulent": "character",
      "petty": "character"}  # a head with its satellites; a satellite alone, not "trivial"
  assert [w for w, _, _ in lines] == sorted(w for w, _, _ in lines)
  evidence = {w: e for w, _, e in lines}
  assert evidence["ass"] == "published: list-a,list-b"
  assert evidence["gun"] == "wordnet: gun (noun): a weapon that discharges a missile"
  header = "".join(line for line in out.read_text().splitlines(True) if line.startswith("#"))
  assert "WordNet 3.0" in header and "python -m sweet_jax.codebook.exclusion_rules" in header
  assert "# Reasons (15 words):\n#   profanity                  2\n#   slur_or_vulgar " in header
  assert exclusions.load(str(out))["french"] == "ethnicity_nationality"


def test_generator_without_wordnet(tmp_path, capsys):
  assert exclusion_rules.main([f"--wordnet_dir={tmp_path}/none", f"--out={tmp_path}/x"]) == 1
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and "install Debian wordnet-base" in error
  assert "--wordnet_dir" in error and not os.path.exists(tmp_path / "x")


# ---------------------------------------------------------------------------------------
# The shipped files.


def test_shipped_list_is_what_the_generator_writes():
  text = open(exclusions.DEFAULT_FILE, encoding="utf-8").read()
  lines = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
  assert all(len(fields) == 3 for fields in lines)
  words = [w for w, _, _ in lines]
  assert words == sorted(set(words)) and all(sources.is_plain_word(w) for w in words)
  reasons = [r for _, r, _ in lines]
  assert set(reasons) == set(exclusion_rules.REASONS)
  assert all(e.startswith(("published: ", "wordnet: ", "added: ")) for _, _, e in lines)
  counts = "".join(f"#   {r:<22} {reasons.count(r):5d}\n" for r in exclusion_rules.REASONS)
  assert f"# Reasons ({len(words)} words):\n{counts}" in text
  assert not set(exclusion_rules.KEPT) & set(words) - set(exclusion_rules.read_published())
  assert set(exclusion_rules.ADDED) <= set(words)


def test_vendored_published_lists():
  published = exclusion_rules.read_published()
  with open(exclusion_rules.PUBLISHED_FILE, encoding="utf-8") as f:
    header = "".join(line for line in f if line.startswith("#"))
  for package in ("better-profanity 0.7.0", "naughty-words 1.2.0", "wordfilter 0.2.6",
                  "cuss 2.2.0", "MIT", "CC BY 4.0"):
    assert package in header
  assert len(published) > 2000 and all(sources.is_plain_word(w) for w in published)
  lists = {name for names in published.values() for name in names.split(",")}
  assert lists == {"better-profanity", "ldnoobw", "wordfilter", "cuss"}
