"""Write factual_recall.jsonl: short factual prompts whose answer is one word, written for this
book (CC0). Run from this folder: python make_facts.py. Each line: {"prompt", "answer", "category"};
the answer is the continuation as the model should produce it, with its leading space."""
import json

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
    "Russia": "Moscow", "China": "Beijing", "Egypt": "Cairo", "Greece": "Athens", "Portugal": "Lisbon",
    "Austria": "Vienna", "Ireland": "Dublin", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki",
    "Denmark": "Copenhagen", "Poland": "Warsaw", "Hungary": "Budapest", "Thailand": "Bangkok", "Kenya": "Nairobi",
    "Peru": "Lima", "Argentina": "Buenos", "Cuba": "Havana", "Canada": "Ottawa", "Australia": "Canberra",
    "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad", "South Korea": "Seoul", "the Netherlands": "Amsterdam",
    "Belgium": "Brussels", "Switzerland": "Bern", "Czechia": "Prague", "Ukraine": "Kyiv", "Indonesia": "Jakarta",
    "the Philippines": "Manila", "Vietnam": "Hanoi", "Chile": "Santiago", "Colombia": "Bogotá", "Venezuela": "Caracas",
    "Nigeria": "Abuja", "Ethiopia": "Addis", "Morocco": "Rabat", "Saudi Arabia": "Riyadh", "Syria": "Damascus",
    "Lebanon": "Beirut", "Afghanistan": "Kabul", "Pakistan": "Islamabad", "Bangladesh": "Dhaka", "Nepal": "Kathmandu",
    "Romania": "Bucharest", "Bulgaria": "Sofia", "Serbia": "Belgrade", "Croatia": "Zagreb", "Scotland": "Edinburgh",
    "England": "London", "Wales": "Cardiff", "Iceland": "Reykjavik", "Mexico": "Mexico", "Malaysia": "Kuala",
}
LANGUAGES = {
    "France": "French", "Germany": "German", "Italy": "Italian", "Spain": "Spanish", "Japan": "Japanese",
    "Russia": "Russian", "China": "Chinese", "Brazil": "Portuguese", "Portugal": "Portuguese", "Greece": "Greek",
    "Poland": "Polish", "Sweden": "Swedish", "Norway": "Norwegian", "Finland": "Finnish", "Denmark": "Danish",
    "the Netherlands": "Dutch", "Turkey": "Turkish", "Egypt": "Arabic", "Mexico": "Spanish", "Argentina": "Spanish",
    "Israel": "Hebrew", "Iran": "Persian", "Korea": "Korean", "Vietnam": "Vietnamese", "Thailand": "Thai",
    "Hungary": "Hungarian", "Ukraine": "Ukrainian", "Romania": "Romanian", "Austria": "German", "Chile": "Spanish",
}
CURRENCIES = {
    "Japan": "yen", "the United Kingdom": "pound", "the United States": "dollar", "India": "rupee",
    "Russia": "ruble", "China": "yuan", "Mexico": "peso", "South Korea": "won", "Switzerland": "franc",
    "Germany": "euro", "France": "euro", "Italy": "euro", "Brazil": "real", "Canada": "dollar", "Australia": "dollar",
}
CONTINENTS = {
    "France": "Europe", "Germany": "Europe", "Poland": "Europe", "Norway": "Europe", "Italy": "Europe",
    "Kenya": "Africa", "Nigeria": "Africa", "Egypt": "Africa", "Ghana": "Africa", "Ethiopia": "Africa",
    "Japan": "Asia", "China": "Asia", "India": "Asia", "Thailand": "Asia", "Vietnam": "Asia", "Mongolia": "Asia",
}
ELEMENTS = {  # symbol -> element
    "O": "oxygen", "H": "hydrogen", "C": "carbon", "N": "nitrogen", "Fe": "iron", "Au": "gold", "Ag": "silver",
    "Cu": "copper", "Na": "sodium", "K": "potassium", "He": "helium", "Ca": "calcium", "Pb": "lead", "Zn": "zinc",
    "S": "sulfur", "Cl": "chlorine", "Hg": "mercury", "Ne": "neon",
}
AUTHORS = [  # (work, answer after the author's first name or "by")
    ("Hamlet was written by William", "Shakespeare"), ("Romeo and Juliet was written by William", "Shakespeare"),
    ("Macbeth was written by William", "Shakespeare"), ("Pride and Prejudice was written by Jane", "Austen"),
    ("Oliver Twist was written by Charles", "Dickens"), ("A Christmas Carol was written by Charles", "Dickens"),
    ("War and Peace was written by Leo", "Tolstoy"), ("The Origin of Species was written by Charles", "Darwin"),
    ("Nineteen Eighty-Four was written by George", "Orwell"), ("Animal Farm was written by George", "Orwell"),
    ("The Odyssey is attributed to the poet", "Homer"), ("Moby-Dick was written by Herman", "Melville"),
    ("The Adventures of Tom Sawyer was written by Mark", "Twain"), ("Frankenstein was written by Mary", "Shelley"),
    ("The theory of relativity was developed by Albert", "Einstein"), ("The telephone was invented by Alexander Graham", "Bell"),
    ("The laws of motion were formulated by Isaac", "Newton"), ("The Mona Lisa was painted by Leonardo da", "Vinci"),
    ("The first man to walk on the Moon was Neil", "Armstrong"), ("The first president of the United States was George", "Washington"),
    ("Radioactivity was studied by Marie", "Curie"), ("The light bulb is credited to Thomas", "Edison"),
]
PLACES = [
    ("The Eiffel Tower is in the city of", "Paris"), ("The Colosseum is in the city of", "Rome"),
    ("Big Ben is in the city of", "London"), ("The Statue of Liberty is in the city of New", "York"),
    ("The Kremlin is in the city of", "Moscow"), ("The Acropolis is in the city of", "Athens"),
    ("The Brandenburg Gate is in the city of", "Berlin"), ("The Sydney Opera House is in the country of", "Australia"),
    ("The pyramids of Giza are in the country of", "Egypt"), ("The Taj Mahal is in the country of", "India"),
    ("The Great Wall is in the country of", "China"), ("Mount Fuji is in the country of", "Japan"),
    ("The Amazon rainforest is mostly in the country of", "Brazil"), ("The city of Toronto is in the country of", "Canada"),
    ("The city of Munich is in the country of", "Germany"), ("The city of Barcelona is in the country of", "Spain"),
    ("The city of Venice is in the country of", "Italy"), ("The city of Lyon is in the country of", "France"),
    ("The city of Osaka is in the country of", "Japan"), ("The city of Mumbai is in the country of", "India"),
]
NATURE = [
    ("The largest planet in the solar system is", "Jupiter"), ("The planet closest to the Sun is", "Mercury"),
    ("The planet known as the Red Planet is", "Mars"), ("The star at the centre of our solar system is the", "Sun"),
    ("The natural satellite of the Earth is the", "Moon"), ("Water is made of hydrogen and", "oxygen"),
    ("The gas that plants take in from the air is carbon", "dioxide"), ("The largest ocean on Earth is the", "Pacific"),
    ("The longest river in Africa is the", "Nile"), ("The tallest mountain on Earth is Mount", "Everest"),
    ("The largest desert in Africa is the", "Sahara"), ("Water freezes at zero degrees", "Celsius"),
    ("The colour of a clear daytime sky is", "blue"), ("The colour of fresh grass is", "green"),
    ("The colour of snow is", "white"), ("The colour of a ripe banana is", "yellow"),
    ("The colour of coal is", "black"), ("The colour of a ripe tomato is", "red"),
    ("A baby dog is called a", "puppy"), ("A baby cat is called a", "kitten"), ("A baby cow is called a", "calf"),
    ("A baby sheep is called a", "lamb"), ("A baby horse is called a", "foal"),
    ("The animal known as the king of the jungle is the", "lion"), ("The largest animal on Earth is the blue", "whale"),
    ("The fastest land animal is the", "cheetah"), ("Bees make", "honey"), ("Cows give us", "milk"),
    ("Hens lay", "eggs"), ("Spiders spin", "webs"),
]
CALENDAR = [
    ("The day after Monday is", "Tuesday"), ("The day after Tuesday is", "Wednesday"),
    ("The day after Wednesday is", "Thursday"), ("The day after Thursday is", "Friday"),
    ("The day after Friday is", "Saturday"), ("The day after Saturday is", "Sunday"),
    ("The day after Sunday is", "Monday"), ("The month after January is", "February"),
    ("The month after March is", "April"), ("The month after May is", "June"), ("The month after July is", "August"),
    ("The month after September is", "October"), ("The month after November is", "December"),
    ("The first month of the year is", "January"), ("The last month of the year is", "December"),
    ("Christmas is celebrated in the month of", "December"), ("Halloween is celebrated in the month of", "October"),
    ("A week has seven", "days"), ("A year has twelve", "months"), ("An hour has sixty", "minutes"),
]
BODY_AND_THINGS = [
    ("People see with their", "eyes"), ("People hear with their", "ears"), ("People smell with their", "nose"),
    ("The organ that pumps blood around the body is the", "heart"), ("The organ that people think with is the", "brain"),
    ("People breathe with their", "lungs"), ("A doctor who treats teeth is a", "dentist"),
    ("The person who flies an aeroplane is the", "pilot"), ("Bread is baked by a", "baker"),
    ("Letters are delivered by the", "postman"), ("A tool for cutting paper is a pair of", "scissors"),
    ("People write on a blackboard with", "chalk"), ("The opposite of hot is", "cold"),
    ("Ice is frozen", "water"), ("The frozen water that falls from the sky in winter is", "snow"),
    ("The number of legs a spider has is", "eight"), ("The number of legs an insect has is", "six"),
    ("The number of continents on Earth is", "seven"), ("A triangle has three", "sides"), ("A square has four", "sides"),
]

rows = (
    [(f"The capital of {c} is", a, "capital") for c, a in CAPITALS.items()]
    + [(f"The official language of {c} is", a, "language") for c, a in LANGUAGES.items()]
    + [(f"The currency of {c} is the", a, "currency") for c, a in CURRENCIES.items()]
    + [(f"{c} is a country in", a, "continent") for c, a in CONTINENTS.items()]
    + [(f"The chemical element with the symbol {s} is", a, "element") for s, a in ELEMENTS.items()]
    + [(p, a, "person") for p, a in AUTHORS]
    + [(p, a, "place") for p, a in PLACES]
    + [(p, a, "nature") for p, a in NATURE]
    + [(p, a, "calendar") for p, a in CALENDAR]
    + [(p, a, "everyday") for p, a in BODY_AND_THINGS]
)
prompts = [p for p, _, _ in rows]
assert len(prompts) == len(set(prompts)), "duplicate prompt"
with open("factual_recall.jsonl", "w", encoding="utf-8") as f:
    for prompt, answer, category in rows:
        f.write(json.dumps({"prompt": prompt, "answer": " " + answer, "category": category}, ensure_ascii=False) + "\n")
print(f"{len(rows)} prompts written")
