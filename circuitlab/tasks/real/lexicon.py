"""Word lists of the real-language tasks, taken from (or in the style of) the papers that
introduced them. Each task keeps only the words its model's tokenizer encodes as one token
with a leading space, so lists are generous on purpose.
"""

from __future__ import annotations

# ----------------------------------------------------------------------------------- IOI
IOI_NAMES: tuple[str, ...] = tuple("""
Aaron Adam Alan Alex Alice Amy Anderson Andre Andrew Andy Anna Anthony Arthur Austin Blake
Brandon Brian Carter Charles Charlie Christian Christopher Clark Cole Collins Connor Crew
Crystal Daniel David Dean Edward Elizabeth Emily Eric Eva Ford Frank George Georgia Graham
Grant Henry Ian Jack Jacob Jake James Jamie Jane Jason Jay Jennifer Jeremy Jessica John
Jonathan Jordan Joseph Joshua Justin Kate Kelly Kevin Kyle Laura Leon Lewis Lisa Louis Luke
Madison Marco Marcus Maria Mark Martin Mary Matthew Max Michael Michelle Morgan Patrick Paul
Peter Prince Rachel Richard River Robert Roman Rose Ruby Russell Ryan Sarah Scott Sean Simon
Stephen Steven Sullivan Taylor Thomas Tyler Victoria Warren William
""".split())
"""First names of Wang et al. (2022), "Interpretability in the Wild"."""

IOI_PLACES: tuple[str, ...] = ("store", "garden", "restaurant", "school", "hospital", "office",
                               "house", "station")
"""Places of Wang et al. (2022)."""

IOI_OBJECTS: tuple[str, ...] = ("ring", "kiss", "bone", "basketball", "computer", "necklace",
                                "drink", "snack")
"""Objects of Wang et al. (2022)."""

IOI_TEMPLATES: tuple[str, ...] = (
    "When {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} had a lot of fun at the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} were working at the {PLACE}. {S} decided to give a {OBJECT} to",
    "Then, {N1} and {N2} were thinking about going to the {PLACE}. {S} wanted to give a {OBJECT} to",
    "Then, {N1} and {N2} had a long argument, and afterwards {S} said to",
    "After {N1} and {N2} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {N1} and {N2} got a {OBJECT} at the {PLACE}, {S} decided to give it to",
    "When {N1} and {N2} got a {OBJECT} at the {PLACE}, {S} decided to give the {OBJECT} to",
    "While {N1} and {N2} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "While {N1} and {N2} were commuting to the {PLACE}, {S} gave a {OBJECT} to",
    "After the lunch, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Afterwards, {N1} and {N2} went to the {PLACE}. {S} gave a {OBJECT} to",
    "Then, {N1} and {N2} had a long argument. Afterwards {S} said to",
    "The {PLACE} {N1} and {N2} went to had a {OBJECT}. {S} gave it to",
    "Friends {N1} and {N2} found a {OBJECT} at the {PLACE}. {S} gave it to",
)
"""Wang et al.'s templates (their BABA list, plus the paper's headline "When ... went to the
store" sentence), written with the first two names as N1 N2: ABBA fills N1=IO, N2=S; BABA
fills N1=S, N2=IO. S is the repeated subject (S2); the prompt ends before the indirect object."""

# -------------------------------------------------------------------------- greater-than
GT_NOUNS: tuple[str, ...] = tuple("""
abduction accord affair agreement appraisal assaults assessment attack attempts campaign
captivity case challenge chaos clash collaboration coma competition confrontation consequence
conspiracy construction consultation contact contract convention cooperation custody deal
decline decrease demonstrations development disagreement disorder dispute domination dynasty
effect effort employment endeavor engagement epidemic evaluation exchange existence expansion
expedition experiments fall fame flights friendship growth hardship hostility illness impact
imprisonment improvement incarceration increase insurgency invasion investigation journey
kingdom marriage modernization negotiation notoriety obstruction operation order outbreak
outcome overhaul patrols pilgrimage plague plan practice process program progress project
pursuit quest raids reforms reign relationship retaliation riot rise rivalry romance rule
sanctions shift siege slump stature stint strikes study test testing tests therapy tour
tradition treaty trial trip unemployment voyage war warfare work
""".split())
"""Event nouns in the style of Hanna et al. (2023), "How does GPT-2 compute greater-than?"."""

GT_TEMPLATE: str = "The {noun} lasted from the year {century}{yy} to the year {century}"
"""Hanna et al.'s sentence; the model should continue with a year after the start year."""

GT_CENTURIES: tuple[str, ...] = ("11", "12", "13", "14", "15", "16", "17")
"""Century prefixes of Hanna et al."""

# ------------------------------------------------------------------------ factual recall
COUNTRIES: tuple[tuple[str, str, str | None], ...] = (
    ("France", "Paris", "French"), ("Italy", "Rome", "Italian"), ("Germany", "Berlin", "German"),
    ("Spain", "Madrid", "Spanish"), ("England", "London", "English"), ("Japan", "Tokyo", "Japanese"),
    ("Russia", "Moscow", "Russian"), ("China", "Beijing", "Chinese"), ("Egypt", "Cairo", "Arabic"),
    ("Greece", "Athens", "Greek"), ("Portugal", "Lisbon", "Portuguese"), ("Ireland", "Dublin", None),
    ("Austria", "Vienna", "German"), ("Poland", "Warsaw", "Polish"), ("Hungary", "Budapest", "Hungarian"),
    ("Sweden", "Stockholm", "Swedish"), ("Norway", "Oslo", "Norwegian"), ("Finland", "Helsinki", "Finnish"),
    ("Denmark", "Copenhagen", "Danish"), ("Belgium", "Brussels", None), ("the Netherlands", "Amsterdam", "Dutch"),
    ("Switzerland", "Bern", None), ("Canada", "Ottawa", None), ("Australia", "Canberra", "English"),
    ("Iran", "Tehran", "Persian"), ("Iraq", "Baghdad", "Arabic"), ("Syria", "Damascus", "Arabic"),
    ("Lebanon", "Beirut", "Arabic"), ("Turkey", "Ankara", "Turkish"), ("Afghanistan", "Kabul", None),
    ("Pakistan", "Islamabad", "Urdu"), ("Thailand", "Bangkok", "Thai"), ("Vietnam", "Hanoi", "Vietnamese"),
    ("South Korea", "Seoul", "Korean"), ("the Philippines", "Manila", None), ("Indonesia", "Jakarta", "Indonesian"),
    ("Kenya", "Nairobi", "Swahili"), ("Peru", "Lima", "Spanish"), ("Chile", "Santiago", "Spanish"),
    ("Cuba", "Havana", "Spanish"), ("Venezuela", "Caracas", "Spanish"), ("Ecuador", "Quito", "Spanish"),
    ("Uruguay", "Montevideo", "Spanish"), ("Bangladesh", "Dhaka", "Bengali"), ("Nepal", "Kathmandu", "Nepali"),
    ("Saudi Arabia", "Riyadh", "Arabic"), ("Qatar", "Doha", "Arabic"), ("Jordan", "Amman", "Arabic"),
    ("Azerbaijan", "Baku", None), ("Georgia", "Tbilisi", None), ("Ukraine", "Kiev", "Ukrainian"),
    ("Belarus", "Minsk", None), ("Romania", "Bucharest", "Romanian"), ("Bulgaria", "Sofia", "Bulgarian"),
    ("Serbia", "Belgrade", "Serbian"), ("Croatia", "Zagreb", "Croatian"), ("Estonia", "Tallinn", "Estonian"),
    ("Latvia", "Riga", "Latvian"), ("Lithuania", "Vilnius", "Lithuanian"), ("Iceland", "Reykjavik", "Icelandic"),
    ("New Zealand", "Wellington", "English"), ("Brazil", "Brasilia", "Portuguese"),
    ("South Africa", "Pretoria", None), ("Nigeria", "Abuja", "English"), ("Ghana", "Accra", "English"),
    ("Senegal", "Dakar", "French"), ("Sudan", "Khartoum", "Arabic"), ("Libya", "Tripoli", "Arabic"),
    ("Tunisia", "Tunis", "Arabic"), ("Algeria", "Algiers", "Arabic"), ("Morocco", "Rabat", "Arabic"),
    ("Uganda", "Kampala", "English"), ("Zimbabwe", "Harare", "English"), ("Zambia", "Lusaka", "English"),
    ("Angola", "Luanda", "Portuguese"), ("Taiwan", "Taipei", "Chinese"), ("Mongolia", "Ulaanbaatar", "Mongolian"),
    ("Uzbekistan", "Tashkent", "Uzbek"), ("Armenia", "Yerevan", "Armenian"), ("North Korea", "Pyongyang", "Korean"),
    ("Oman", "Muscat", "Arabic"), ("Yemen", "Sanaa", "Arabic"), ("Malta", "Valletta", None),
    ("Cyprus", "Nicosia", "Greek"), ("Slovenia", "Ljubljana", "Slovenian"), ("Slovakia", "Bratislava", "Slovak"),
    ("Albania", "Tirana", "Albanian"), ("Israel", "Jerusalem", "Hebrew"), ("Colombia", "Bogota", "Spanish"),
    ("Jamaica", "Kingston", "English"), ("Scotland", "Edinburgh", None), ("Wales", "Cardiff", None),
    ("Northern Ireland", "Belfast", None), ("the United States", "Washington", "English"),
    ("the United Kingdom", "London", "English"), ("the Czech Republic", "Prague", "Czech"),
    ("Kazakhstan", "Astana", None), ("Rwanda", "Kigali", None), ("Mozambique", "Maputo", "Portuguese"),
    ("Bhutan", "Thimphu", None), ("Laos", "Vientiane", "Lao"), ("Moldova", "Chisinau", "Romanian"),
)
"""(country, capital, official language; None where several languages are official).
Countries with a two-word capital (Mexico City, New Delhi, Buenos Aires) are left out."""

LANDMARKS: tuple[tuple[str, str], ...] = (
    ("the Eiffel Tower", "Paris"), ("the Louvre", "Paris"), ("the Arc de Triomphe", "Paris"),
    ("Notre-Dame Cathedral", "Paris"), ("the Colosseum", "Rome"), ("the Trevi Fountain", "Rome"),
    ("the Pantheon", "Rome"), ("Big Ben", "London"), ("Buckingham Palace", "London"),
    ("Westminster Abbey", "London"), ("Trafalgar Square", "London"), ("the Brandenburg Gate", "Berlin"),
    ("the Reichstag", "Berlin"), ("the Kremlin", "Moscow"), ("Red Square", "Moscow"),
    ("the Forbidden City", "Beijing"), ("Tiananmen Square", "Beijing"), ("the Acropolis", "Athens"),
    ("the Parthenon", "Athens"), ("the Sagrada Familia", "Barcelona"), ("Camp Nou", "Barcelona"),
    ("the Prado Museum", "Madrid"), ("the Rijksmuseum", "Amsterdam"), ("the Anne Frank House", "Amsterdam"),
    ("the Burj Khalifa", "Dubai"), ("the CN Tower", "Toronto"), ("the Willis Tower", "Chicago"),
    ("Wrigley Field", "Chicago"), ("the Space Needle", "Seattle"), ("the Liberty Bell", "Philadelphia"),
    ("Fenway Park", "Boston"), ("the White House", "Washington"), ("the Lincoln Memorial", "Washington"),
    ("Hagia Sophia", "Istanbul"), ("the Blue Mosque", "Istanbul"), ("the Topkapi Palace", "Istanbul"),
    ("the Little Mermaid statue", "Copenhagen"), ("the Tivoli Gardens", "Copenhagen"),
    ("the Atomium", "Brussels"), ("the Manneken Pis", "Brussels"), ("Charles Bridge", "Prague"),
    ("the Alhambra", "Granada"), ("the Rialto Bridge", "Venice"), ("St. Mark's Basilica", "Venice"),
    ("the Uffizi Gallery", "Florence"), ("La Scala", "Milan"), ("the Schonbrunn Palace", "Vienna"),
    ("the Hofbrauhaus", "Munich"), ("the Gateway of India", "Mumbai"), ("the Red Fort", "Delhi"),
    ("the Taj Mahal", "Agra"), ("the Golden Temple", "Amritsar"), ("the Western Wall", "Jerusalem"),
    ("the Grand Palace", "Bangkok"), ("the Shwedagon Pagoda", "Yangon"), ("the Harbour Bridge", "Sydney"),
    ("Old Trafford", "Manchester"), ("Anfield", "Liverpool"), ("the Belem Tower", "Lisbon"),
    ("the Vasa Museum", "Stockholm"), ("the Bund", "Shanghai"), ("the Sugarloaf Mountain", "Rio"),
)
"""(landmark, city it stands in)."""
