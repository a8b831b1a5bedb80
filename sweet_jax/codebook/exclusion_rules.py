r"""Generates the codebook's exclusion list: published offensive-word lists + WordNet categories.

    python -m sweet_jax.codebook.exclusion_rules [--wordnet_dir=/usr/share/wordnet]
        [--published=PATH] [--out=PATH]

Maintainers run it when a rule or a source changes (it needs Debian `wordnet-base`); the
codebook build and the readout read only the file it writes, `excluded_words.tsv`
(`exclusions.py`), so neither WordNet nor the lists' packages are needed at run time.
A word (lowercase letters only: what a codebook row can be) is excluded when

  - a published list names it (`published_offensive_words.tsv`): reason `profanity`;
  - WordNet files a sense of it under "ethnic slur", or its reading sense (below) under
    "obscenity" or "disparagement" or with such a note in the gloss ("(offensive term)",
    "vulgar slang for ..."): reason `slur_or_vulgar`;
  - its reading sense falls in one of `CATEGORIES` (reason: the category's name): a root
    synset or one of its hyponyms, an adjective of a named cluster ("dishonest" and its
    satellites "deceitful", "thieving"), an adjective or adverb derived from one ("suicide"
    -> "suicidal", "sex" -> "sexual" -> "sexually"), or an adjective of a named country,
    continent or island ("French");
  - it is on `ADDED`, the words no rule catches (found by reading the selection and the
    readouts); and it is not on `KEPT`, the everyday words a rule catches only through a
    quirk of the database.

The reading sense is the one a reader takes the printed word in: its most often tagged
sense (WordNet's cntlist.rev counts, over all parts of speech; for an untagged word, its
first sense in the part of speech the codebook gives it). So "white" (the colour, not the
person), "cold" (not the illness) and "horse" (not heroin) stay while "gun", "man" and
"naked" go; recall over precision where it matters most: an ethnic slur goes whatever
its common sense ("spade"), and the published lists catch words whose offensive sense is
not the common one ("ass", "gay", "cock").
"""

import argparse
import dataclasses
import os
import re
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence

from sweet_jax.codebook import exclusions, sources, wordnet
from sweet_jax.codebook.wordnet import SynsetId, WordNet

PUBLISHED_FILE = os.path.join(os.path.dirname(__file__), "published_offensive_words.tsv")


@dataclasses.dataclass(frozen=True)
class Category:
  """Words of one kind, by WordNet synsets named "lemma.pos.NN" (the NN-th sense of lemma).

  `roots`: these synsets and their hyponyms. `peoples`: those hyponyms named after a place
  or a people (capitalised: "American", "Londoner"; not "villager"). `pertains_to`: the
  adjectives pertaining to a named instance of these or their hyponyms ("French": France
  is an instance of European country). `unless`: hyponym trees left out (alcohol and
  tobacco are no street drugs here: "wine" and "cigar" are everyday sights). `clusters`:
  adjectives with, for the head of a cluster, its similar-to satellites ("dishonest" ->
  "deceitful", "thieving"; adjectives have no hyponyms).
  """

  reason: str
  roots: tuple[str, ...]
  peoples: tuple[str, ...] = ()
  pertains_to: tuple[str, ...] = ()
  unless: tuple[str, ...] = ()
  clusters: tuple[str, ...] = ()


# Earlier categories win when a word falls in several (suicide is also a killing).
CATEGORIES = (
    Category("self_harm", ("suicide.n.01", "suicide.n.02", "self-destruction.n.02")),
    Category("sexual", (
        "sexual_activity.n.01", "sex.n.03", "sexual_desire.n.01", "sexual_arousal.n.01",
        "reproductive_organ.n.01", "genitalia.n.01", "nakedness.n.01", "nude.n.01",
        "prostitute.n.01", "prostitution.n.01", "pornography.n.01", "sexual_assault.n.01",
        "rape.v.01", "copulate.v.01", "masturbate.v.01", "sensualist.n.01",
        "sex_symbol.n.01", "pervert.n.01")),
    Category("sexual_orientation", (
        "homosexual.n.01", "homosexual.a.01", "gay.a.06", "lesbian.n.01", "lesbian.a.01",
        "heterosexual.n.01", "heterosexual.a.01", "bisexual.n.01", "bisexual.a.01",
        "transsexual.n.01", "transsexual.n.02", "transsexual.a.01", "transgender.a.01",
        "transvestite.n.01", "homosexuality.n.01", "heterosexuality.n.01",
        "bisexuality.n.01")),
    Category("gender", (
        "female.n.01", "female.n.02", "male.n.01", "male.n.02", "sex.n.04", "feminist.n.01",
        "feminism.n.01", "feminism.n.02", "masculinity.n.01", "femininity.n.01",
        "masculine.a.01", "masculine.a.02", "feminine.a.01", "feminine.a.02",
        "womanhood.n.01", "manhood.n.01", "mother.n.01", "father.n.01", "daughter.n.01",
        "son.n.01", "sister.n.01", "brother.n.01", "husband.n.01", "wife.n.01")),
    Category("religion", (
        "religion.n.01", "religion.n.02", "religious_person.n.01", "nonreligious_person.n.01",
        "clergyman.n.01", "religious.n.01", "spiritual_leader.n.01", "deity.n.01",
        "god.n.01", "theism.n.01", "atheism.n.01", "religious_doctrine.n.01",
        "sacred_text.n.01", "church.n.01", "place_of_worship.n.01", "religious_ceremony.n.01",
        "sect.n.01", "heresy.n.01", "gentile.n.01", "divine.a.01", "secular.a.01"),
             clusters=("religious.a.01", "holy.a.01")),
    Category("ethnicity_nationality", (
        "ethnic_group.n.01", "race.n.03", "nationality.n.01", "ethnicity.n.01",
        "person_of_color.n.01", "white.n.01", "black.n.05", "jew.n.01", "semite.n.01",
        "immigrant.n.01", "emigrant.n.01", "migrant.n.01", "refugee.n.01", "foreigner.n.01",
        "tribe.n.01", "native.a.01", "exotic.a.01",
        # A language's name is its people's ("Spanish", "English").
        "natural_language.n.01"),
             peoples=("inhabitant.n.01", "native.n.01", "nation.n.02"),
             pertains_to=("country.n.02", "continent.n.01", "island.n.01")),
    Category("disability", (
        "disability.n.01", "mental_disorder.n.01", "mental_illness.n.01",
        "mental_retardation.n.01", "cripple.n.01", "sick_person.n.01", "lunatic.n.01",
        "simpleton.n.01", "dwarf.n.01", "blindness.n.01", "deafness.n.01", "autism.n.01",
        "disabled.a.01", "crippled.a.01", "disease.n.01", "ill.a.01", "diseased.a.01",
        "sterile.a.01", "dyslexia.n.01", "tumor.n.01", "illness.n.01", "infection.n.01",
        "eating_disorder.n.01")),
    Category("violence", (
        "violence.n.01", "killing.n.01", "killing.n.02", "homicide.n.01", "killer.n.01",
        "murderer.n.01", "kill.v.01", "shoot.v.01", "weapon.n.01", "bomb.n.01",
        "explosive_device.n.01", "war.n.01", "attack.n.01", "assault.n.02", "torture.n.05",
        "torture.v.02", "terrorism.n.01", "terrorist.n.01", "execution.n.01", "abuse.n.01",
        "death.n.01", "death.n.03", "dead.a.01", "die.v.01", "corpse.n.01",
        "military_action.n.01", "ammunition.n.01", "attack.v.01", "punch.v.01", "injury.n.01",
        "deadly.a.02", "fatal.a.01"), clusters=("deadly.a.01",)),
    Category("drugs", (
        "drug_of_abuse.n.01", "narcotic.n.01", "controlled_substance.n.01",
        "hallucinogen.n.01", "drug_user.n.01", "drug_addiction.n.01", "drug_abuse.n.01",
        "drug_dealer.n.01", "addictive.a.01", "sober.a.01"),
             unless=("alcohol.n.01", "tobacco.n.01")),
    # Words that judge or label the person next to them. The police, courts and judges are
    # everyday sights and stay; guilt, crime, prison and criminals go.
    Category("crime", (
        "crime.n.01", "criminal.n.01", "convict.n.01", "perpetrator.n.01", "delinquent.n.01",
        "guilt.n.01", "fraud.n.01", "theft.n.01", "conspiracy.n.01", "punishment.n.01",
        "correctional_institution.n.01", "prisoner.n.01", "arrest.n.01", "arrest.v.01",
        "imprison.v.01", "convict.v.01", "steal.v.01", "criminal.a.01", "criminal.a.02",
        "criminal.a.03"), clusters=("guilty.a.01", "illegal.a.01")),
    # A side: ideologies, parties and their adherents. "political", "government", "vote" and
    # "democracy" (a civic system more than a side) name the field and stay.
    Category("politics", (
        "political_orientation.n.01", "political_party.n.01", "socialism.n.01",
        "capitalism.n.01", "communist.n.01", "socialist.n.01", "democrat.n.01",
        "republican.n.01", "liberal.n.01", "conservative.n.01", "conservative.n.02",
        "leftist.n.01", "radical.n.02", "populist.n.01", "nationalism.n.02", "activism.n.01",
        "conservative.a.01", "conservative.a.02", "nationalist.a.01", "activist.a.01"),
             unless=("democracy.n.01",), clusters=("partisan.a.01",)),
    # Judgments of bodies and looks. Words that describe objects too stay: "tall", "short",
    # "thin", "slim", "lean", "heavy", "round"; so do compliments ("beautiful", "cute").
    Category("appearance", (
        "fat_person.n.01", "obesity.n.01", "ugliness.n.01", "baldness.n.01", "freak.n.01",
        "skinny.a.01", "emaciated.a.01", "bald.a.02", "toothless.a.01"),
             unless=("plumpness.n.01", "garishness.n.02"),  # "roundness", "gaudy"
             clusters=("fat.a.01", "ugly.a.01", "unattractive.a.01")),
    # Ageist person words. "old", "young", "senior", "ancient" describe things all the time.
    Category("age", (
        "old_person.n.01", "grandparent.n.01", "senility.n.01", "elderly.a.01", "senile.a.01",
        "geriatric.a.01", "superannuated.a.01"), unless=("ancient.n.01",)),
    # Judgments of character, morals, honesty and intelligence, and bigotry. The generic
    # evaluatives ("bad", "poor", "wrong", "awful", "silly", "absurd") describe things as
    # often and stay, as do emotions ("angry", "jealous") and mild traits ("shy", "naive",
    # "stubborn"). Heads whose clusters hold such words are roots alone, not clusters.
    Category("character", (
        "bad_person.n.01", "unpleasant_person.n.01", "coward.n.01", "incompetent.n.01",
        "partisan.n.01", "jerk.n.01", "swot.n.01", "racism.n.01", "sexism.n.01",
        "homophobia.n.01", "xenophobia.n.01", "dishonor.n.01", "scandal.n.01", "sin.n.01",
        "stupidity.n.01", "ignorance.n.01", "incompetence.n.01", "arrogance.n.01",
        "vanity.n.01", "narcissism.n.01", "greed.n.01", "selfishness.n.01", "hypocrisy.n.01",
        "dishonesty.n.01", "dishonesty.n.02", "deceit.n.01", "treachery.n.01",
        "corruption.n.01", "cruelty.n.01", "cruelty.n.02", "cowardice.n.01", "evil.n.01",
        "foolish.a.01", "asinine.a.01", "idiotic.a.01", "clueless.a.01", "incompetent.a.02",
        "inept.a.02", "unreasonable.a.01", "irresponsible.a.01", "questionable.a.01",
        "untrustworthy.a.01", "devious.a.01", "shady.a.01", "hypocritical.a.01",
        "cowardly.a.01", "unkind.a.01", "hateful.a.02", "abusive.a.01", "sarcastic.a.01",
        "cynical.a.01", "arrogant.a.01", "conceited.a.01", "haughty.a.01", "bigheaded.a.01",
        "smug.a.01", "greedy.a.01", "obnoxious.a.01", "pathetic.a.02", "creepy.a.01",
        "whiny.a.01", "sexist.a.01", "homophobic.a.01", "xenophobic.a.01", "hostile.a.01",
        "bigoted.a.01"),
             unless=("critic.n.03",),  # a fault-finder: brings "critical"
             clusters=(
        "stupid.a.01", "unintelligent.a.01", "uneducated.a.01", "immature.a.01",
        "dishonest.a.01", "dishonorable.a.01", "unfaithful.a.01", "unscrupulous.a.01",
        "unprincipled.a.01", "corrupt.a.01", "immoral.a.01", "evil.a.01", "wicked.a.01",
        "inhumane.a.01", "malicious.a.01", "hateful.a.01", "selfish.a.01", "impolite.a.01",
        "disrespectful.a.01", "pretentious.a.01")),
    # Misfortune as a label: victims, the poor, the homeless, the unemployed.
    Category("misfortune", (
        "unfortunate.n.01", "poverty.n.01", "unemployment.n.01", "slave.n.01", "orphan.n.01"),
             unless=("survivor.n.01",), clusters=("unemployed.a.01",)),
    # Animal names and "savage" used to dehumanise people (the racist ape trope).
    Category("dehumanizing", ("ape.n.01", "monkey.n.01", "savage.n.01")),
)
# Words no rule catches (their offensive sense is not the reading one, no published list
# names them) that are still unsafe on a photo of a person: word -> (reason, why).
ADDED = {
    "cripple": ("disability", "a slur for a disabled person; the verb is the common sense"),
    "midget": ("disability", "a slur for a person of short stature; WordNet's adjective"),
    "stripper": ("sexual", "a striptease performer; the paint remover is listed first"),
    "caucasian": ("ethnicity_nationality", "a race term; the first adjective is the region"),
    # Found by reading the 1024 most frequent adjectives and nouns left by the rules.
    "minority": ("ethnicity_nationality", "a group differing racially from the rest; no root"),
    "ghetto": ("ethnicity_nationality", "a segregated quarter; slang for Black neighbourhoods"),
    "pregnant": ("gender", "labels a person's sex and pregnancy, a protected status"),
    "chick": ("gender", "slang for a young woman; WordNet's reading is the young bird"),
    "mum": ("gender", "'mother' (British); WordNet's reading is 'silent'"),
    "depression": ("disability", "a mental-health state, not the disorder WordNet files"),
    "anxiety": ("disability", "a mental-health state, not the disorder WordNet files"),
    "assault": ("violence", "the attack and the crime; read as the verb"),
    "violent": ("violence", "'acting with great force'; linked to no violence sense"),
    "bloody": ("violence", "covered with blood, and a British curse"),
    "alcoholic": ("drugs", "on a photo of a person, an addict; read as 'containing alcohol'"),
    "suspect": ("crime", "'a person under suspicion'; read as the verb"),
    "hideous": ("appearance", "'extremely ugly'; read as 'horrific' (of crimes)"),
    "lazy": ("character", "'disinclined to work'; its most tagged sense is 'a lazy river'"),
    "laziness": ("character", "'a dislike of work'; a rule for 'indolence' would take 'idle'"),
    "petty": ("character", "'small-minded'; its first listed sense is 'lower in rank'"),
    "cheat": ("character", "a deceiver; read as the verb"),
    "creep": ("character", "'an unpleasantly strange person'; read as the verb"),
    "monster": ("character", "'a cruel wicked person'; read as the imaginary creature"),
    "troll": ("character", "on the web an insult for a person; WordNet has the creature"),
    "loser": ("misfortune", "'an unsuccessful person'; read as the loser of a contest"),
    "homeless": ("misfortune", "'without a home'; WordNet's first adjective is 'stateless'"),
    "peasant": ("misfortune", "a class label used as an insult; read as 'a country person'"),
    "filthy": ("appearance", "'disgustingly dirty', of a person an insult; seen in a readout"),
    "smelly": ("appearance", "'having an unpleasant smell', of a person an insult"),
    # Found by reading the CPU vocabulary (1024 adjectives, 1024 nouns) a second time, and
    # the held-out readouts of the main job.
    "race": ("ethnicity_nationality", "a person's race; read as the verb 'to rush'"),
    "foreign": ("ethnicity_nationality", "on a person, marks them as a foreigner"),
    "alien": ("ethnicity_nationality", "a foreigner in law, and a slur for immigrants"),
    "accent": ("ethnicity_nationality", "on a person, marks where they come from"),
    "gender": ("gender", "a person's gender; read as the grammatical category"),
    "adult": ("sexual", "as in 'adult content'; read as a grown animal or person"),
    "intimate": ("sexual", "'sexually intimate'; read as 'closely acquainted'"),
    "desire": ("sexual", "sexual desire; read as the feeling"),
    "teen": ("age", "labels a person a minor, and is a pornography search term"),
    "teenage": ("age", "labels a person a minor, and is a pornography search term"),
    "teenager": ("age", "labels a person a minor"),
    "mental": ("disability", "slang for 'insane'; read as 'of the mind'"),
    "mad": ("disability", "'insane'; read as 'angry'"),
    "sane": ("disability", "a judgment of a person's mental health"),
    "delusional": ("disability", "a psychiatric label for a person"),
    "unhealthy": ("disability", "a judgment of a person's health"),
    "chronic": ("disability", "a chronic illness, and slang for cannabis"),
    "righteous": ("religion", "the pious, and 'self-righteous'"),
    "karma": ("religion", "a Hindu and Buddhist doctrine"),
    "enemy": ("violence", "on a person, labels them an enemy; read as a military force"),
    "blood": ("violence", "gore on a photo; read as the body fluid"),
    "trigger": ("violence", "a gun's trigger; not filed under weapons"),
    "threat": ("violence", "a threat of harm; read as 'a source of danger'"),
    "explosive": ("violence", "explosives; read as 'liable to explode'"),
    # Words that judge a person's worth or mock them. The generic evaluatives ("bad",
    # "wrong", "awful", "silly", "absurd") stay, as in the character category.
    "nasty": ("character", "'of persons, malicious'"),
    "dirty": ("character", "of a person an insult, and 'obscene'; read as 'soiled'"),
    "toxic": ("character", "of a person, 'harmful to others'; read as 'poisonous'"),
    "hate": ("character", "on a photo reads as hate of the person; read as the verb"),
    "insult": ("character", "an insult; read as the verb"),
    "offense": ("character", "'a lack of politeness', and a crime"),
    "offensive": ("character", "'violating or tending to offend'"),
    "inferior": ("character", "'of low rank or importance', of a person"),
    "worthless": ("character", "'lacking in value', of a person"),
    "useless": ("character", "'incapable of functioning usefully', of a person"),
    "mediocre": ("character", "'of inferior quality', of a person"),
    "incapable": ("character", "'lacking ability', of a person"),
    "failure": ("character", "'a person with a record of failing'"),
    "laughable": ("character", "'to be laughed at': mockery"),
    "ridiculous": ("character", "'inspiring scornful pity': mockery"),
    "sketchy": ("character", "slang for 'shady, untrustworthy'; read as 'giving only major points'"),
    "desperate": ("character", "'arising from despair', of a person a put-down"),
    "unpopular": ("character", "'regarded with disfavor', of a person"),
    "stereotypical": ("character", "on a photo of a person, a stereotype"),
    "sloppy": ("character", "'lacking neatness', of a person"),
    "insecure": ("character", "of a person, 'lacking self-confidence'; read as 'not firm'"),
    "trash": ("character", "of a person, an insult ('white trash')"),
    "garbage": ("character", "of a person, an insult"),
    "lie": ("character", "a lie, a liar; read as 'be located'"),
    "shame": ("character", "on a photo of a person, shaming"),
    "beast": ("dehumanizing", "of a person, dehumanizing; read as 'an animal'"),
    "hairy": ("appearance", "a remark on a person's body"),
    # Seen in the main job's held-out readout at b080ca9.
    "suspicious": ("crime", "of a person, 'suspected'; read as 'arousing suspicion'"),
    "bust": ("sexual", "the breasts, and an arrest; read as 'a failure'"),
    "aggressive": ("character", "of a person, 'hostile'; as 'hostile'"),
    "mindless": ("character", "'stupid', of a person; read as 'not requiring thought'"),
    "pregnancy": ("gender", "as 'pregnant': a protected status"),
    "cannibalism": ("violence", "eating human flesh; filed under no violence root"),
    "detox": ("drugs", "withdrawal from drugs or alcohol"),
    "goon": ("character", "'a thug'; read as 'a stupid person'"),
    "wiener": ("sexual", "vulgar slang for the penis, and the sausage"),
    "priesthood": ("religion", "the clergy; filed under no religion root"),
}
# Everyday words a WordNet rule catches only through a quirk of the database, kept.
KEPT = {
    "automatic": "the adjective is linked to 'automatic rifle' (violence)",
    "officially": "linked through 'official' to 'office', a religious rite",
    "monochromatic": "one colour; its first listed sense is 'of monochromatism' (colour blindness)",
    "stiff": "the texture; ties with 'an ordinary man' (gender) in the sense counts",
    "shepherd": "the herder; ties with 'a clergyman' (religion) in the sense counts",
    "pastoral": "rural scenes; ties with 'of a pastor' (religion) in the sense counts",
    "party": "the celebration; its most often tagged sense is the political party",
    "bourbon": "the whiskey; its most often tagged sense is a reactionary politician",
    "runner": "the athlete; its most tagged sense is a smuggler (crime)",
    "hood": "the head covering; its most tagged sense is a hoodlum (crime)",
    "mug": "the cup; ties with 'to rob at gunpoint' (crime) in the sense counts",
    "junior": "younger, lower in rank; ties with a term of address for an annoying male",
    "smoothie": "the drink; its first listed sense is a charmer (character)",
    "tricky": "difficult; its first listed sense is 'not to be trusted' (character)",
    "densely": "'densely populated'; its first listed sense is 'in a stupid manner'",
    "unfortunately": "'by bad luck'; derived from 'unfortunate' (misfortune)",
    "pepper": "the spice; ties with 'to bombard' (violence) in the sense counts",
    "shell": "the seashell, the egg's; its most tagged sense is the artillery shell",
    "cartridge": "the ink or game cartridge; its most tagged sense is ammunition",
    "canister": "the container; its first listed sense is case shot (ammunition)",
    "defense": "in sport and law; its most tagged sense is the military one",
    "engagement": "the betrothal, the appointment; its most tagged sense is a battle",
    "scratchy": "of fabric and sound; its first listed sense is 'causing abrasion' (injury)",
    "circumvent": "'to get around'; its first listed sense is 'to besiege'",
}
REASONS = ("profanity", "slur_or_vulgar") + tuple(c.reason for c in CATEGORIES)
# WordNet's usage domains for offensive words, and the usage notes its glosses carry.
ETHNIC_SLUR_DOMAIN = "ethnic_slur.n.01"
ETHNIC_SLUR_NOTE = "(ethnic slur)"
OFFENSIVE_DOMAINS = ("disparagement.n.01", "obscenity.n.02")
OFFENSIVE_NOTE = re.compile(
    r"\((offensive|vulgar|obscene|disparaging|derogatory)[^)]*\)|\b(offensive|derogatory|"
    r"disparaging|obscene|vulgar)( and \w+)? (term|name|word|slang|expression)s?\b")
_HYPONYMS = ("~",)  # "~i" (instances) are named individuals: "King", "White" the writer
_DERIVED = ("+", "\\")  # derivationally related form; pertainym (adjective/adverb)
WordSense = tuple[str, SynsetId]  # (lowercase lemma, synset)


def category_senses(wn: WordNet, category: Category) -> set[WordSense]:
  """The (lemma, synset) word senses of `category`."""
  synsets = _closure(wn, category.roots, _HYPONYMS, category.unless)
  synsets |= {s for s in _closure(wn, category.peoples, _HYPONYMS, category.unless)
              if wn.synsets[s].words[0][:1].isupper()}
  members = {(lemma, s) for s in synsets for lemma in wn.synsets[s].lemmas()}
  members |= {(lemma, s) for name in category.clusters for s in _cluster(wn, name)
              for lemma in wn.synsets[s].lemmas()}
  places = {s for s in _closure(wn, category.pertains_to, ("~", "~i"), ())
            if any(p.symbol == "@i" for p in wn.synsets[s].pointers)}
  for synset in wn.synsets.values():
    if synset.id[0] == "a" and any(p.symbol == "\\" and p.target in places
                                   for p in synset.pointers):
      members.update((lemma, synset.id) for lemma in synset.lemmas())
  members |= _derived_senses(wn, members, "a")  # "sex" -> "sexual"
  return members | _derived_senses(wn, members, "r")  # "sexual" -> "sexually"


def _closure(wn: WordNet, names: Iterable[str], symbols: Sequence[str],
             unless: Iterable[str]) -> set[SynsetId]:
  """The synsets named and those reached from them by `symbols`, except `unless` trees."""
  seen = {wn.synset(name).id for name in unless}
  todo, found = [wn.synset(name).id for name in names], set()
  while todo:
    synset_id = todo.pop()
    if synset_id not in seen:
      seen.add(synset_id)
      found.add(synset_id)
      todo.extend(p.target for p in wn.synsets[synset_id].pointers if p.symbol in symbols)
  return found


def _cluster(wn: WordNet, name: str) -> set[SynsetId]:
  """An adjective synset and, when it heads a cluster, its satellites (a satellite's
  similar-to pointer leads to its head, whose other satellites it does not bring)."""
  synset = wn.synset(name)
  if synset.ss_type != "a":
    return {synset.id}
  return {synset.id} | {p.target for p in synset.pointers if p.symbol == "&"}


def _derived_senses(wn: WordNet, members: set[WordSense], pos: str) -> set[WordSense]:
  """The `pos` ("a" or "r") senses derived from or pertaining to a member sense."""
  found = set()
  for synset in wn.synsets.values():
    if synset.id[0] != pos:
      continue
    lemmas = synset.lemmas()
    for p in synset.pointers:
      if p.symbol not in _DERIVED:
        continue
      targets = wn.synsets[p.target].lemmas()
      targets = targets if p.target_word == 0 else (targets[p.target_word - 1],)
      if any((t, p.target) in members for t in targets):
        found.update((s, synset.id) for s in (lemmas if p.source == 0 else
                                               (lemmas[p.source - 1],)))
  return found


def slur_senses(wn: WordNet) -> tuple[set[WordSense], set[WordSense]]:
  """(ethnic slurs, other offensive senses): word senses in WordNet's usage domains
  "ethnic slur" and "obscenity", "disparagement", or whose gloss carries such a note."""
  ethnic = wn.synset(ETHNIC_SLUR_DOMAIN).id
  offensive = {wn.synset(name).id for name in OFFENSIVE_DOMAINS}
  slurs, others = set(), set()
  for synset in wn.synsets.values():
    lemmas = synset.lemmas()
    note = synset.gloss.split('"')[0]
    if ETHNIC_SLUR_NOTE in note:
      slurs.update((lemma, synset.id) for lemma in lemmas)
    elif OFFENSIVE_NOTE.search(note):
      others.update((lemma, synset.id) for lemma in lemmas)
    for p in synset.pointers:
      if p.symbol == ";u" and (p.target == ethnic or p.target in offensive):
        found = slurs if p.target == ethnic else others
        found.update((lemma, synset.id) for lemma in
                     (lemmas if p.source == 0 else (lemmas[p.source - 1],)))
  return slurs, others


def printed_senses(wn: WordNet, lemma: str) -> dict[str, list[SynsetId]]:
  """The senses of `lemma` per part of speech that its lowercase print can mean: a
  proper-noun sense ("Badger", a Wisconsinite) only when it is tagged more often than
  every common one of its part of speech ("Bible"; "American" has no common one)."""
  senses = {}
  for pos in wordnet.POS_FILES:
    listed = list(wn.senses.get((lemma, pos), ()))
    common = [s for s in listed if not _is_proper(wn.synsets[s], lemma)]
    top = {kind: max((wn.tag_counts.get((lemma, s), 0) for s in group), default=-1)
           for kind, group in (("common", common), ("all", listed))}
    senses[pos] = common if common and top["common"] >= top["all"] else listed
  return senses


def any_sense(wn: WordNet, lemma: str) -> set[SynsetId]:
  """Every sense of `lemma` (an ethnic slur excludes a word whatever its common sense)."""
  return set(wn.word_senses(lemma))


def reading_senses(wn: WordNet, lemma: str) -> set[SynsetId]:
  """The senses a reader takes `lemma` in: of its printed senses, the most often tagged
  over all parts of speech (all of a tie); for an untagged word, the first sense of the
  part of speech a codebook gives it in each group (adjective over noun, adverb over
  verb, as pos.py)."""
  senses = printed_senses(wn, lemma)
  counts = {s: wn.tag_counts.get((lemma, s), 0) for listed in senses.values() for s in listed}
  top = max(counts.values(), default=0)
  if top:
    return {s for s, c in counts.items() if c == top}
  firsts = (next(iter(senses[p] or senses[q]), None) for p, q in (("a", "n"), ("r", "v")))
  return {s for s in firsts if s is not None}


def _is_proper(synset: wordnet.Synset, lemma: str) -> bool:
  return all(w[:1].isupper() for w in synset.words if w.lower() == lemma)


def read_published(path: str = PUBLISHED_FILE) -> dict[str, str]:
  """The vendored published lists: word -> the lists naming it."""
  return dict(exclusions.read_lines(path, "published word list"))


def excluded_words(wn: WordNet, published: Mapping[str, str]) -> dict[str, tuple[str, str]]:
  """word -> (reason, evidence) for every plain word the rules exclude, sorted."""
  found = {w: ("profanity", f"published: {lists}") for w, lists in published.items()
           if sources.is_plain_word(w)}
  for word, (reason, why) in ADDED.items():
    found.setdefault(word, (reason, f"added: {why}"))

  def claim(lemma: str, synset_id: SynsetId, reason: str,
            senses: Callable[[WordNet, str], set[SynsetId]]) -> None:
    """Excludes `lemma` for `reason` when `senses(wn, lemma)` holds `synset_id`."""
    if (sources.is_plain_word(lemma) and lemma not in found and lemma not in KEPT
        and synset_id in senses(wn, lemma)):
      found[lemma] = (reason, f"wordnet: {_describe(wn, synset_id)}")

  slurs, offensive = slur_senses(wn)
  for lemma, synset_id in sorted(slurs):
    claim(lemma, synset_id, "slur_or_vulgar", any_sense)
  for lemma, synset_id in sorted(offensive):
    claim(lemma, synset_id, "slur_or_vulgar", reading_senses)
  for category in CATEGORIES:
    for lemma, synset_id in sorted(category_senses(wn, category)):
      claim(lemma, synset_id, category.reason, reading_senses)
  return dict(sorted(found.items()))


def _describe(wn: WordNet, synset_id: SynsetId) -> str:
  """A synset as its first word and the start of its gloss, for the file's evidence column."""
  synset = wn.synsets[synset_id]
  gloss = synset.gloss.split(";")[0].strip()
  return f"{synset.words[0]} ({wordnet.POS_FILES[synset_id[0]]}): {gloss[:70]}"


def write(path: str, words: Mapping[str, tuple[str, str]], wn: WordNet, published: str) -> None:
  """The list as `exclusions.load` reads it, with a header naming its sources and counts."""
  counts = {r: sum(1 for reason, _ in words.values() if reason == r) for r in REASONS}
  header = [
      "Words the language codebook leaves out by default, and why: `word<TAB>reason<TAB>",
      "evidence` a line (a plain one-word-a-line list works too, as a user's --exclude).",
      "Written by `python -m sweet_jax.codebook.exclusion_rules` (edit the rules there, not",
      f"this file) from {os.path.basename(published)} (better-profanity, LDNOOBW,",
      "wordfilter, cuss: versions and licences in its header) and category rules over",
      f"WordNet {wn.version} (Princeton University; Debian wordnet-base).",
      f"Reasons ({len(words)} words):",
  ] + [f"  {reason:<22} {counts[reason]:5d}" for reason in REASONS]
  with open(path, "w", encoding="utf-8") as f:
    f.write("".join(f"# {line}\n" for line in header))
    f.writelines(f"{w}\t{reason}\t{evidence}\n" for w, (reason, evidence) in words.items())


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m sweet_jax.codebook.exclusion_rules",
                                   description=__doc__.split("\n\n")[1])
  parser.add_argument("--wordnet_dir", default=wordnet.DEFAULT_DIR,
                      help="WordNet 3.0 database files (Debian wordnet-base).")
  parser.add_argument("--published", default=PUBLISHED_FILE)
  parser.add_argument("--out", default=exclusions.DEFAULT_FILE)
  args = parser.parse_args(argv)
  try:
    wn = wordnet.read(args.wordnet_dir)
    words = excluded_words(wn, read_published(args.published))
    write(args.out, words, wn, args.published)
  except (ValueError, OSError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 1
  print(f"wrote {len(words)} words to {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
