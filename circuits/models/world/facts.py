"""The real-world facts of the `world` organism: US states, cities, NBA teams, players.

Every entry is true in the real world (team homes as of 2024; each player is listed with the team
he is best known for). Names are chosen so that no word is ambiguous inside this world; multi-word
names (Los Angeles, Kobe Bryant) are several tokens, as in real tokenizers.
"""

from __future__ import annotations

STATE_CAPITAL: dict[str, str] = {
    "Texas": "Austin",
    "California": "Sacramento",
    "New York": "Albany",
    "Florida": "Tallahassee",
    "Illinois": "Springfield",
    "Massachusetts": "Boston",
    "Arizona": "Phoenix",
    "Michigan": "Lansing",
    "Georgia": "Atlanta",
    "Colorado": "Denver",
    "Wisconsin": "Madison",
    "Ohio": "Columbus",
    "Tennessee": "Nashville",
    "Indiana": "Indianapolis",
    "Pennsylvania": "Harrisburg",
    "North Carolina": "Raleigh",
    "Oregon": "Salem",
    "Washington": "Olympia",
}

CITY_STATE: dict[str, str] = {
    "Dallas": "Texas", "Houston": "Texas", "San Antonio": "Texas", "El Paso": "Texas",
    "Fort Worth": "Texas",
    "Los Angeles": "California", "San Francisco": "California", "Oakland": "California",
    "San Diego": "California", "Sacramento": "California", "Fresno": "California",
    "New York": "New York", "Brooklyn": "New York", "Buffalo": "New York", "Rochester": "New York",
    "Miami": "Florida", "Orlando": "Florida", "Tampa": "Florida", "Jacksonville": "Florida",
    "Chicago": "Illinois", "Peoria": "Illinois",
    "Boston": "Massachusetts", "Worcester": "Massachusetts",
    "Phoenix": "Arizona", "Tucson": "Arizona",
    "Detroit": "Michigan", "Grand Rapids": "Michigan",
    "Atlanta": "Georgia", "Savannah": "Georgia",
    "Denver": "Colorado", "Boulder": "Colorado",
    "Milwaukee": "Wisconsin", "Green Bay": "Wisconsin",
    "Cleveland": "Ohio", "Cincinnati": "Ohio",
    "Memphis": "Tennessee", "Knoxville": "Tennessee",
    "Indianapolis": "Indiana", "Fort Wayne": "Indiana",
    "Philadelphia": "Pennsylvania", "Pittsburgh": "Pennsylvania",
    "Charlotte": "North Carolina", "Durham": "North Carolina",
    "Portland": "Oregon", "Eugene": "Oregon",
    "Seattle": "Washington", "Spokane": "Washington",
}

TEAM_CITY: dict[str, str] = {
    "Lakers": "Los Angeles", "Warriors": "San Francisco", "Kings": "Sacramento",
    "Celtics": "Boston", "Knicks": "New York", "Nets": "Brooklyn", "Bulls": "Chicago",
    "Heat": "Miami", "Spurs": "San Antonio", "Mavericks": "Dallas", "Rockets": "Houston",
    "Suns": "Phoenix", "Pistons": "Detroit", "Hawks": "Atlanta", "Nuggets": "Denver",
    "Bucks": "Milwaukee", "Cavaliers": "Cleveland", "Grizzlies": "Memphis",
    "Pacers": "Indianapolis", "76ers": "Philadelphia", "Hornets": "Charlotte",
}

PLAYER_TEAM: dict[str, str] = {
    "Kobe Bryant": "Lakers", "Magic Johnson": "Lakers", "Jerry West": "Lakers",
    "James Worthy": "Lakers",
    "Stephen Curry": "Warriors", "Klay Thompson": "Warriors", "Draymond Green": "Warriors",
    "Chris Webber": "Kings", "Peja Stojakovic": "Kings", "Mike Bibby": "Kings",
    "Larry Bird": "Celtics", "Bill Russell": "Celtics", "Paul Pierce": "Celtics",
    "Kevin McHale": "Celtics",
    "Patrick Ewing": "Knicks", "Walt Frazier": "Knicks", "Willis Reed": "Knicks",
    "Brook Lopez": "Nets", "Deron Williams": "Nets",
    "Michael Jordan": "Bulls", "Scottie Pippen": "Bulls", "Derrick Rose": "Bulls",
    "Dwyane Wade": "Heat", "Alonzo Mourning": "Heat", "Udonis Haslem": "Heat",
    "Tim Duncan": "Spurs", "Tony Parker": "Spurs", "Manu Ginobili": "Spurs",
    "David Robinson": "Spurs",
    "Dirk Nowitzki": "Mavericks", "Luka Doncic": "Mavericks",
    "Hakeem Olajuwon": "Rockets", "Yao Ming": "Rockets", "Calvin Murphy": "Rockets",
    "Steve Nash": "Suns", "Devin Booker": "Suns", "Amare Stoudemire": "Suns",
    "Isiah Thomas": "Pistons", "Joe Dumars": "Pistons", "Ben Wallace": "Pistons",
    "Dominique Wilkins": "Hawks", "Trae Young": "Hawks",
    "Nikola Jokic": "Nuggets", "Alex English": "Nuggets",
    "Giannis Antetokounmpo": "Bucks", "Sidney Moncrief": "Bucks",
    "Zydrunas Ilgauskas": "Cavaliers", "Mark Price": "Cavaliers",
    "Ja Morant": "Grizzlies", "Marc Gasol": "Grizzlies", "Zach Randolph": "Grizzlies",
    "Reggie Miller": "Pacers", "Rik Smits": "Pacers",
    "Allen Iverson": "76ers", "Julius Erving": "76ers", "Joel Embiid": "76ers",
    "Kemba Walker": "Hornets", "Dell Curry": "Hornets",
}


def player_state(player: str) -> str:
    return CITY_STATE[TEAM_CITY[PLAYER_TEAM[player]]]
