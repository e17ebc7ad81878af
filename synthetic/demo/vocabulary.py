"""Word lists and entity kinds the demo world is built from.

Every kind pairs a WikiData-style description template with a separate list of
context phrases.  The phrases are what a sentence *about* such an entity would
say ("the rebounds", "the floodwaters"); they never repeat the description's
head noun ("basketball player", "river"), so matching a sentence to a
description needs world knowledge, not string overlap.  Vocabularies are
disjoint across kinds so that a phrase can be labelled informative or
misleading unambiguously.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping


@dataclass(frozen=True)
class Kind:
    """One sort of thing the KB holds (an occupation, a river, a film...)."""

    key: str
    head: str  # description head noun; sentences never contain it
    instance: str  # KB "instance" field (WikiData P31 label)
    description: str  # template over the detail fields below
    attr: str  # template for the KB "attr" field
    details: tuple[str, ...]  # hintable details: country, region, year, flavor, creator
    context: tuple[str, ...]  # loosely related noun phrases for sentences
    textures: tuple[str, ...]  # background textures its images prefer
    label_styles: tuple[str, ...]  # how the KB label is built from the shared name
    translations: Mapping[str, str]  # second-language descriptions for the dump
    years: tuple[int, int] = (1900, 2020)
    flavors: Mapping[str, str] = field(default_factory=dict)  # flavor -> hint phrase
    measure: tuple[str, int, int] | None = None  # (attr field, low, high)
    is_person: bool = False


def _flavors(**pairs: str) -> Mapping[str, str]:
    return MappingProxyType({key.replace("_", " "): value for key, value in pairs.items()})


def _tr(de: str, fr: str) -> Mapping[str, str]:
    return MappingProxyType({"de": de, "fr": fr})


PERSON_STYLES = ("{given} {name}", "{given} {name}", "{given} {name}", "{name}")

KINDS: tuple[Kind, ...] = (
    Kind(
        "basketball_player", "basketball player", "human",
        "{demonym} basketball player (born {year})",
        "Occupation basketball player. Country of citizenship {country}. Date of birth {year}",
        ("country", "year"),
        ("the rebounds", "the playoffs", "the court", "a buzzer-beater", "the draft",
         "the free throws", "a slam dunk", "the sneaker deal", "the three-point line"),
        ("gradient", "dots"), PERSON_STYLES, _tr("Basketballspieler", "joueur de basket-ball"),
        years=(1940, 2001), is_person=True,
    ),
    Kind(
        "footballer", "footballer", "human",
        "{demonym} footballer (born {year})",
        "Occupation association football player. Country of citizenship {country}. Date of birth {year}",
        ("country", "year"),
        ("the penalty kick", "the transfer window", "a hat-trick", "the offside flag",
         "the dressing room", "the goalkeeper", "the extra time", "the corner kick"),
        ("gradient", "stripes"), PERSON_STYLES, _tr("Fußballspieler", "footballeur"),
        years=(1940, 2003), is_person=True,
    ),
    Kind(
        "politician", "politician", "human",
        "{demonym} politician (born {year})",
        "Occupation politician. Country of citizenship {country}. Date of birth {year}",
        ("country", "year"),
        ("the ballot", "the campaign trail", "a stump speech", "the coalition talks",
         "the opinion polls", "the cabinet reshuffle", "the constituency", "the manifesto"),
        ("gradient", "grid"), PERSON_STYLES, _tr("Politiker", "personnalité politique"),
        years=(1920, 1990), is_person=True,
    ),
    Kind(
        "painter", "painter", "human",
        "{demonym} painter ({year}–{end_year})",
        "Occupation painter. Country of citizenship {country}. Date of birth {year}. Date of death {end_year}",
        ("country", "year"),
        ("the canvas", "the brushstrokes", "an oil sketch", "the studio light",
         "the easel", "the self-portrait", "the pigments", "the varnish"),
        ("dots", "blotches"), PERSON_STYLES, _tr("Maler", "peintre"),
        years=(1780, 1940), is_person=True,
    ),
    Kind(
        "singer", "singer", "human",
        "{demonym} {flavor} singer",
        "Occupation singer. Country of citizenship {country}. Genre {flavor} music",
        ("country", "flavor"),
        ("the chorus", "the encore", "the microphone", "the world tour",
         "the backing vocals", "a ballad", "the sold-out show", "the duet"),
        ("dots", "gradient"), PERSON_STYLES, _tr("Sänger", "chanteur"),
        flavors=_flavors(jazz="the smoky club", pop="the radio charts", folk="the acoustic set",
                         soul="the gospel choir", opera="the aria", country="the honky-tonk bar"),
        is_person=True,
    ),
    Kind(
        "river", "river", "river",
        "river in {region}, {country}",
        "Country {country}. Located in the administrative territorial entity {region}. Length {measure} km",
        ("region",),
        ("the floodwaters", "the fishermen", "the old bridge", "the weir", "the towpath",
         "the spring thaw", "the rowing regatta", "the ferry crossing", "the otters"),
        ("waves", "stripes"), ("{name}", "{name}", "{name} River"), _tr("Fluss", "rivière"),
        measure=("length", 12, 900),
    ),
    Kind(
        "city", "city", "city",
        "city in {region}, {country}",
        "Country {country}. Located in the administrative territorial entity {region}. Population {measure}",
        ("region",),
        ("the town hall", "the mayor", "the tram line", "the old quarter", "the market square",
         "the suburbs", "the cathedral", "the rush hour"),
        ("grid", "checker"), ("{name}",), _tr("Stadt", "ville"),
        measure=("population", 8000, 900000),
    ),
    Kind(
        "mountain", "mountain", "mountain",
        "mountain in {region}, {country}",
        "Country {country}. Located in the administrative territorial entity {region}. "
        "Elevation above sea level {measure} metres",
        ("region",),
        ("the summit", "the avalanche", "the climbers", "the ridge", "the snow line",
         "the base camp", "the cable car", "the north face"),
        ("gradient", "blotches"), ("Mount {name}", "{name}"), _tr("Berg", "montagne"),
        measure=("elevation", 400, 4800),
    ),
    Kind(
        "company", "company", "business",
        "{demonym} {flavor} company",
        "Industry {flavor}. Country {country}. Inception {year}",
        ("country", "flavor", "year"),
        ("the shareholders", "the quarterly results", "the merger", "the stock price",
         "the layoffs", "the board meeting", "the annual report", "the chief executive"),
        ("grid", "stripes"), ("{name} Industries", "{name} Group", "{name}"),
        _tr("Unternehmen", "entreprise"), years=(1850, 2015),
        flavors=_flavors(steel="the blast furnaces", software="the app update",
                         shipping="the container port", pharmaceutical="the clinical trial",
                         automotive="the assembly line", brewing="the beer halls",
                         textile="the looms", banking="the loan book"),
    ),
    Kind(
        "band", "band", "musical group",
        "{demonym} {flavor} band",
        "Genre {flavor}. Country of origin {country}. Inception {year}",
        ("country", "flavor", "year"),
        ("the reunion tour", "the drummer", "the debut record", "the festival stage",
         "the setlist", "the bassist", "the breakup", "the tour bus"),
        ("dots", "blotches"), ("{name}", "The {name} Project", "{name}"),
        _tr("Band", "groupe de musique"), years=(1955, 2018),
        flavors=_flavors(rock="the guitar riffs", punk="the mosh pit", jazz="the saxophone solo",
                         folk="the fiddle", metal="the double bass drums",
                         electronic="the synthesizers", indie="the college radio"),
    ),
    Kind(
        "ship", "ship", "ship",
        "{demonym} {flavor} launched in {year}",
        "Country of registry {country}. Vessel class {flavor}. Service entry {year}",
        ("country", "flavor", "year"),
        ("the maiden voyage", "the crew", "the harbour", "the dockyard", "the hull",
         "the captain's log", "the dry dock", "the storm at sea"),
        ("waves", "grid"), ("SS {name}", "HMS {name}", "MV {name}"), _tr("Schiff", "navire"),
        years=(1850, 1990),
        flavors=_flavors(ocean_liner="the first-class passengers", frigate="the gun deck",
                         cargo_ship="the cargo hold", research_vessel="the sonar soundings",
                         icebreaker="the pack ice", sailing_ship="the rigging"),
    ),
    Kind(
        "film", "film", "film",
        "{year} {demonym} {flavor} film",
        "Genre {flavor} film. Country of origin {country}. Publication date {year}",
        ("country", "flavor", "year"),
        ("the premiere", "the box office", "the director's cut", "the sequel",
         "the trailer", "the casting", "the red carpet", "the screenplay"),
        ("checker", "blotches"), ("{name}",), _tr("Film", "film"), years=(1930, 2022),
        flavors=_flavors(horror="the jump scares", comedy="the punchlines",
                         western="the saloon shootout", war="the trenches",
                         science_fiction="the spaceship sets", romance="the wedding scene",
                         documentary="the archival footage"),
    ),
    Kind(
        "football_club", "football club", "association football club",
        "association football club in {region}, {country}",
        "Sport association football. Country {country}. Located in {region}. Inception {year}",
        ("region", "year"),
        ("the relegation battle", "the home fans", "the league table", "the youth academy",
         "the cup final", "the season tickets", "the away kit", "the terraces"),
        ("stripes", "checker"), ("{name} FC", "FC {name}", "{name} United"),
        _tr("Fußballverein", "club de football"), years=(1870, 1990),
    ),
    Kind(
        "album", "album", "album",
        "{year} studio album by {creator}",
        "Performer {creator}. Publication date {year}",
        ("creator", "year"),
        ("the tracklist", "the vinyl pressing", "the liner notes", "side B",
         "the lead single", "the recording sessions", "the cover art", "the remaster"),
        ("dots", "gradient"), ("{name}",), _tr("Album", "album"), years=(1960, 2022),
    ),
    Kind(
        "novel", "novel", "literary work",
        "{year} novel by {creator}",
        "Author {creator}. Publication date {year}. Form of creative work novel",
        ("creator", "year"),
        ("the first chapter", "the paperback", "the protagonist", "the publisher",
         "the book club", "the plot twist", "the manuscript", "the epilogue"),
        ("blotches", "stripes"), ("{name}",), _tr("Roman", "roman"), years=(1850, 2022),
    ),
)

KINDS_BY_KEY: Mapping[str, Kind] = MappingProxyType({kind.key: kind for kind in KINDS})

# Phrases that fit any entity: they pad sentences without pointing anywhere.
GENERIC_PHRASES = (
    "the headlines", "the weekend", "the anniversary", "the photographs", "the rumours",
    "the local paper", "the interview", "the old postcards", "the tourists", "the podcast",
)

# Hint phrases for a description detail; {…} fields come from the entity's details.
HINT_PHRASES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "country": ("the {demonym} press", "{demonym} newspapers", "{demonym} readers"),
    "region": ("the {region} countryside", "{region_adjective} locals", "visitors to {region}"),
    "year": ("the {decade}s", "memories of the {decade}s"),
    "creator": ("admirers of {creator}", "the {creator} retrospective"),
})

COUNTRIES = (
    ("United States", "American"), ("Canada", "Canadian"), ("France", "French"),
    ("Germany", "German"), ("Italy", "Italian"), ("Spain", "Spanish"), ("Brazil", "Brazilian"),
    ("Japan", "Japanese"), ("Australia", "Australian"), ("Nigeria", "Nigerian"),
    ("Sweden", "Swedish"), ("Argentina", "Argentine"), ("Poland", "Polish"),
    ("Mexico", "Mexican"), ("India", "Indian"), ("United Kingdom", "British"),
)

REGIONS = (  # (region, adjective, country)
    ("Bavaria", "Bavarian", "Germany"), ("Saxony", "Saxon", "Germany"),
    ("Ontario", "Ontarian", "Canada"), ("Tuscany", "Tuscan", "Italy"),
    ("Brittany", "Breton", "France"), ("Andalusia", "Andalusian", "Spain"),
    ("Texas", "Texan", "United States"), ("Oregon", "Oregonian", "United States"),
    ("Queensland", "Queensland", "Australia"), ("Patagonia", "Patagonian", "Argentina"),
    ("Hokkaido", "Hokkaido", "Japan"), ("Silesia", "Silesian", "Poland"),
    ("Lapland", "Lappish", "Sweden"), ("Yorkshire", "Yorkshire", "United Kingdom"),
    ("Minas Gerais", "Mineiro", "Brazil"), ("Kerala", "Keralite", "India"),
)

# Shared surface names: each can be a surname, a river, a town, a film title...
SHARED_NAMES = tuple("""
Jordan Amber Severn Marlow Harlow Avalon Orion Sterling Brooks Carver Weston Ashby Calder
Dalton Everett Fairfax Garland Hadley Ingram Keaton Langley Mercer Norwood Oakley Preston
Quinlan Radford Sutton Thorne Upton Vance Whitby Yardley Ainsley Bexley Clifton Denton
Easton Fenwick Granger Holloway Irving Kendal Linden Morrow Nash Ormond Pembroke Redmond
Selby Tilden Underwood Verity Winslow Alder Barrow Colby Darby Elgin Findlay Halsey Jarrow
Kirkby Lowell Milton Newell Perrin Rowan Stanton Tolland Vernon Wardell Ansel Blyth Corwin
Devlin Ellison Foster Grafton Hartley Keswick Lyndon Medway Nolan Osgood Paxton Ramsey
Shelby Talbot Wexford Bellamy Corin Delmar Emerson Farrow Glenn Haddon Ives Kestrel Lorne
Mayfield Nevis Onslow Pryor Rainier Sable Tamsin Varden Wren Aubrey Bramley Crane Dunmore
Elden Frome Gresham Hollis Juniper Kirby Larkin Marsh Nyland Oriel Penrose Roscoe Sinclair
Tarrant Valen Wilder Yates Zephyr Beckett Cormac Dorsey Fallon Hawthorne Jasper Lennox
Merrick Oswin Rhodes Swale Ardley Brannock Cresswell Dunstan Edgerton Fulbright Gallow
Harrow Iverson Kimber Lockwood Mallory Northcott Pelham Quarry Rookwood Stroud Tremaine
""".split())

GIVEN_NAMES = tuple("""
Marcus Elena Tomas Aisha Kenji Sofia Liam Priya Mateo Ingrid Omar Chloe Diego Hana Victor
Leila Jonas Maya Andre Nadia Felix Greta Samuel Yara Pablo Freya Emil Zara Hugo Ines Ravi
Carmen Oscar Mira Leon Amara Theo Signe Rafael Noor
""".split())

CREATOR_SURNAMES = tuple("""
Okafor Lindqvist Moreau Tanaka Castillo Novak Brennan Adeyemi Kowalski Sato Ferreira
Halvorsen Delacroix Mbeki Romano Valdez Petrov Nakamura Oyelaran Fischer
""".split())

# Same-name things that WikiData holds but the KB does not (dump distractors).
DISTRACTOR_DESCRIPTIONS = (  # (English description, German description)
    ("family name", "Familienname"),
    ("male given name", "männlicher Vorname"),
    ("female given name", "weiblicher Vorname"),
    ("Wikimedia disambiguation page", "Wikimedia-Begriffsklärungsseite"),
    ("asteroid", "Asteroid"),
    ("species of beetle", "Art der Gattung Carabus"),
    ("genus of moths", "Gattung der Schmetterlinge"),
    ("village in {region}, {country}", "Dorf in {region}"),
    ("{year} single by {creator}", "Lied von {creator}"),
    ("racehorse", "Rennpferd"),
    ("typeface", "Schriftart"),
    ("{year} video game", "Computerspiel"),
    ("crater on the Moon", "Mondkrater"),
    ("locomotive class", "Lokomotivbaureihe"),
)

# Two-slot to four-slot sentence frames; {m} is the mention, {a}…{d} noun phrases.
SENTENCE_TEMPLATES: Mapping[int, tuple[str, ...]] = MappingProxyType({
    2: (
        "Nobody expected {m} to come up again, but {a} and {b} changed that.",
        "The article on {m} spent a long paragraph on {a} before turning to {b}.",
        "{m} was mentioned twice tonight, once near {a} and once beside {b}.",
        "Locals still connect {m} with {a}, and older people with {b}.",
        "Photos of {a} showed {m} again, this time close to {b}.",
        "We read about {m}, {a} and {b} on the train home.",
        "According to the guide, {m} is best known for {a} and {b}.",
        "Her grandfather told stories about {m}, {a} and {b} every winter.",
        "Between {a} and {b}, {m} kept coming up.",
    ),
    3: (
        "Between {a}, {b} and {c}, {m} dominated the conversation all week.",
        "The documentary links {m} to {a}, {b} and, briefly, {c}.",
        "Few remember that {m} once meant {a}, {b} and {c} to this town.",
        "After {a} and {b}, people kept asking about {m} and {c}.",
        "{m} came up in a story about {a}, {b} and {c}.",
        "The blog post on {m} covers {a}, then {b}, and finally {c}.",
        "My uncle only talks about {m} when {a}, {b} or {c} come up.",
    ),
    4: (
        "{m} was linked to {a}, {b}, {c} and {d} in yesterday's report.",
        "Talk of {a} and {b} led straight back to {m}, {c} and {d}.",
        "In the interview, {a}, {b}, {c} and {d} all pointed to {m}.",
        "The display about {m} mixed {a}, {b}, {c} and {d} together.",
    ),
})
