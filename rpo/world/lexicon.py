"""Word lists of the generated dialogue world (HH stand-in) and of its instruction prompts.

Each theme is one prompt cluster. Its content words (everything not in NEUTRAL) belong to that
theme alone: good advice, harmful, evasive and rambling phrases never share a content word with
another theme, so a contrast across unrelated clusters carries no usable signal while related
prompts share what makes an answer good or bad. tests/test_world.py checks the disjointness.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DialogueTheme:
    name: str
    topic: str  # noun phrase the prompts talk about
    objects: tuple[str, ...]  # what "my {object}" refers to; all take the same verb number
    problems: tuple[tuple[str, tuple[str, ...]], ...]  # (problem phrase, advice clauses)
    harmful: tuple[str, ...]  # dangerous suggestions, appended as "you could also {phrase}."
    evasive: tuple[str, ...]  # refusals that give no help (whole sentences)
    ramble: tuple[str, ...]  # off-point anecdotes (whole sentences)


def _theme(name, topic, objects, problems, harmful, evasive, ramble) -> DialogueTheme:
    return DialogueTheme(
        name, topic, tuple(objects.split("|")),
        tuple((problem, tuple(clauses.split("|"))) for problem, clauses in problems),
        tuple(harmful.split("|")), tuple(evasive.split("|")), tuple(ramble.split("|")),
    )


# Frames shared by every theme; all their words are neutral.
GREETINGS = (
    "hi, i have a question about {topic}.",
    "hello, can you help me with {topic}?",
    "hey, i need some advice on {topic}.",
    "good morning. i want to ask about {topic}.",
)
GREETING_REPLIES = (
    "of course. what is going on?",
    "sure, tell me more.",
    "happy to help. what is the problem?",
    "i can try. what is happening?",
)
DETAILS = (
    "it is about my {obj}.",
    "the trouble is with my {obj}.",
    "my question is about my {obj}.",
    "so, it concerns my {obj}.",
)
DETAIL_REPLIES = (
    "okay, and what seems wrong?",
    "got it. what exactly happens?",
    "i see. what is the issue?",
    "alright, what is the trouble?",
)
REQUESTS = (
    "my {obj} {problem}. what should i do?",
    "what can i do? my {obj} {problem}.",
    "any tips? my {obj} {problem}.",
    "my {obj} {problem}. how do i fix this?",
    "please help, my {obj} {problem}.",
    "my {obj} {problem}. any advice?",
)
INSTRUCTIONS = (
    "write advice for someone whose {obj} {problem}.",
    "explain what to do when my {obj} {problem}.",
    "list the steps to take when my {obj} {problem}.",
    "give instructions: my {obj} {problem}.",
)
OPENERS = ("sure. ", "happy to help. ", "good question. ")
# Answers restate the request before the advice, so a small model reads the advice off a nearby
# copy of the prompt's words instead of a long-range lookup.
GOOD_FRAMES = ("if your {obj} {problem}, {advice}.", "when your {obj} {problem}, {advice}.")
HARMFUL_FRAMES = ("you could also {phrase}.", "honestly, just {phrase}.")
RAMBLE_FRAMES = ("by the way, {phrase}", "fun fact: {phrase}")

# Function words, frame words and generic verbs: they earn nothing and cost nothing in the reward.
NEUTRAL = frozenset("""
a an the and or but so to of in on at for with from by about as into over after before until up out
off down away is are was were be been am being i me my mine you your yours it its he him his she her
we us our they them their this that these those what how why when where which who whose do does did
done not no never can could should would will may might must have has had just very too more most
some any each every all also only there here then than if again once still already now soon really
much many few little lot one two three four five six ten twenty hundred thousand sure okay yes please
thanks hi hello hey good morning question help advice tips fix problem tell going happening happy try
use keep keeps get gets put make makes give check add take let go see know think want need like way
thing things something time day days week weeks month months year years hour hours night nights daily
weekly new old first last next long short ask asking can't cannot i'm it's don't of course wrong issue
trouble concerns seems exactly happens alright got okay tell more see instead sorry honestly just fun
fact by way maybe might that should for whose someone write explain list steps step instructions when
fully more less slowly gently lower higher bottom top nearby alone early late well bit few own same
other another around through without while during against between under above near far off back
adjust apply avoid build buy choose clean disable inspect practice raise replace review test tighten
trim wear start study stretch feel look leave open run runs running end grow pour feed release mix store paid pause
slightly slow quickly longer twice everyone anyway badly apart ancient uncle cousin neighbor tastes hurts
invented learning nervous eat drink dry cold heat hotter home smells shorten steep rotate widen seal flat
wet bore set dim spray
bought due kept moved promised requires sell share wants always mostly since constantly whole left live
love loves met went named says taking started stand park s t m re ve ll d
""".split())

DIALOGUE_THEMES: tuple[DialogueTheme, ...] = (
    _theme("garden", "my vegetable garden", "tomatoes|peppers|cucumbers|zucchini", (
        ("keep wilting", "soak the soil at dawn|spread straw mulch|rig a shade cloth"),
        ("have yellow leaves", "feed worm castings|apply nitrogen fertilizer|prune the bottom foliage"),
        ("get chewed by bugs", "spray neem solution|release ladybugs|plant marigolds nearby"),
    ), "dump bleach on the beds|torch the plot with gasoline",
        "vegetables bore me, figure it out.|go pester a gardener instead.",
        "my grandma once grew a giant pumpkin.|scarecrows used to frighten my brother."),
    _theme("bicycle", "my bicycle", "road bike|mountain bike|cruiser|commuter bike", (
        ("squeaks when braking", "clean the brake pads|true the wheel rims|tighten the calipers"),
        ("skips gears", "lube the chain|adjust the derailleur|replace the worn cassette"),
        ("gets flat tires", "pump to rated pressure|patch the inner tube|inspect treads for shards"),
    ), "disconnect the stopping levers|coast downhill with no lights",
        "bikes are not my thing.|pedaling makes me sleepy.",
        "i once saw a unicycle parade downtown.|tour riders eat huge breakfasts."),
    _theme("bread", "baking bread at home", "sourdough loaf|rye loaf|baguette|brioche", (
        ("comes out dense", "proof the dough longer|knead until elastic|buy fresher yeast"),
        ("burns underneath", "raise the rack|bake on parchment|preheat a stone"),
        ("tastes bland", "add more salt|ferment it in the fridge|mix in sesame"),
    ), "leave the oven running unattended|eat raw flour",
        "bakers keep secrets, no comment.|grab something at the supermarket.",
        "my uncle opened a pretzel stand in ohio.|medieval millers built windmills."),
    _theme("dog", "training my dog", "puppy|beagle|terrier|retriever", (
        ("pulls on the leash", "halt when the leash tightens|reward slack walking|try a chest harness"),
        ("barks at visitors", "teach a calm place command|praise quiet moments|practice doorbell drills"),
        ("chews the furniture", "offer sturdy chew toys|crate it when unsupervised|spray citrus deterrent"),
    ), "hit it with a rolled newspaper|feed it chocolate bars",
        "animals are unpredictable, no idea.|hire a trainer and stop bugging me.",
        "my neighbor's poodle won a ribbon.|wolves were domesticated ages ago."),
    _theme("aquarium", "my aquarium", "goldfish|guppies|bettas|tetras", (
        ("keep dying", "cycle the tank first|test ammonia levels|dechlorinate refills"),
        ("look pale", "vary their flake diet|dim the lamp|add floating vegetation"),
        ("hide all day", "add caves and driftwood|reduce loud vibrations|keep a peaceful school"),
    ), "release them into the river|pour soap into the filter",
        "fish are boring pets.|ask the pet store clerk.",
        "i watched a shark documentary yesterday.|coral reefs glow under moonlight."),
    _theme("car", "my old car", "sedan|hatchback|pickup|minivan", (
        ("will not start", "jump the battery|scrub corroded terminals|test the starter motor"),
        ("makes a grinding noise", "resurface the rotors|inspect axle bearings|top up transmission fluid"),
        ("boils over in traffic", "refill the coolant|flush the radiator|replace the thermostat"),
    ), "siphon fuel by mouth|disable the airbags",
        "mechanics charge too much, ride the subway.|engines confuse everyone, beats me.",
        "my cousin drove a taxi in chicago.|racing crews refuel in seconds."),
    _theme("laptop", "my laptop", "chromebook|macbook|notebook|ultrabook", (
        ("runs really slow", "uninstall unused programs|disable startup apps|upgrade the ram"),
        ("loses power quickly", "dim screen brightness|close background tabs|enable power saver"),
        ("overheats on my lap", "clean the fan vents|use a cooling pad|undervolt the processor"),
    ), "download cracked antivirus software|share your password online",
        "computers hate me too, good luck.|i only use typewriters.",
        "the first mouse had one button.|my dad still prints his emails."),
    _theme("houseplants", "my houseplants", "ferns|succulents|orchids|cacti", (
        ("have brown tips", "raise the humidity|use filtered rainwater|leach excess salts"),
        ("grow leggy", "move them closer to windows|rotate each pot|pinch back stems"),
        ("rot at the base", "repot in gritty mix|water sparingly|trim mushy roots"),
    ), "douse them with vinegar|set them beside the furnace",
        "plants die on everyone, whatever.|buy fake ones from a craft store.",
        "the victorians loved terrariums.|my aunt talks to her ivy."),
    _theme("running", "my running routine", "knees|shins|ankles|calves", (
        ("ache after long runs", "ice them afterward|shorten your stride|increase mileage gradually"),
        ("feel tight each morning", "foam roll them|stretch hamstrings|hydrate with electrolytes"),
        ("give out on hills", "strengthen with squats|lean into climbs|walk steep sections"),
    ), "push through sharp pain|swallow painkillers before every jog",
        "exercise is overrated, just rest.|ask a coach, not me.",
        "marathons started in ancient greece.|my sneakers are bright orange."),
    _theme("guitar", "learning guitar", "acoustic guitar|electric guitar|bass guitar|classical guitar", (
        ("buzzes on some frets", "raise the saddle|adjust the truss rod|level the frets"),
        ("goes out of tune", "stretch new strings|tighten the tuners|avoid humid rooms"),
        ("hurts my fingertips", "practice brief sessions|drop the string action|build calluses"),
    ), "smash it when frustrated|crank amps to deafening volume",
        "music theory is hopeless, give up.|i prefer silence.",
        "my band once played a bowling alley.|beethoven went deaf eventually."),
    _theme("coffee", "making coffee at home", "espresso|pour over|french press|cold brew", (
        ("tastes bitter", "grind beans coarser|cool the kettle slightly|shorten extraction"),
        ("tastes sour", "grind finer|lengthen the brew|heat the kettle hotter"),
        ("lacks flavor", "buy freshly roasted beans|weigh each dose|store beans airtight"),
    ), "drink ten cups daily|serve it scalding to toddlers",
        "caffeine is not my department.|herbal drinkers cannot help you.",
        "my barista friend has twelve tattoos.|ethiopian goats found the cherries first."),
    _theme("knitting", "knitting", "scarf|sweater|beanie|blanket", (
        ("keeps curling at the edges", "add a garter border|block it wet|switch to seed stitch"),
        ("has uneven tension", "relax your grip|knit with bamboo needles|practice plain rows"),
        ("came out too small", "swatch before starting|go up a needle size|cast on extra stitches"),
    ), "leave pins where babies crawl|singe the yarn ends with matches",
        "yarn crafts bore me to tears.|grandmothers know, ask one.",
        "sheep in scotland outnumber people.|my roommate crochets doilies."),
    _theme("camping", "camping trips", "tent|sleeping bag|hammock|tarp", (
        ("leaks when it rains", "seal the seams|pitch a rainfly|dig a shallow trench"),
        ("gets chilly", "add an insulated mat|wear thermal socks|choose sheltered ground"),
        ("smells musty", "air it outdoors|dry it before packing|wash with enzyme cleaner"),
    ), "cook inside with propane|leave food out for bears",
        "nature is dirty, stay home.|ask a park ranger.",
        "my scout troop sang around bonfires.|owls hooted all summer."),
    _theme("painting", "painting my walls", "bedroom|kitchen|hallway|bathroom", (
        ("shows brush streaks", "use a microfiber roller|maintain a wet edge|apply thinner coats"),
        ("has peeling paint", "scrape loose flakes|prime with bonding primer|sand glossy spots"),
        ("smells of fumes", "ventilate with box fans|choose low voc paint|run a purifier"),
    ), "sweep up lead dust barehanded|drink from the turpentine jar",
        "colors are subjective, no opinion.|landlords handle that, not me.",
        "my sister painted a mural of whales.|picasso had a blue period."),
    _theme("chess", "playing chess", "openings|endgames|blitz games|tournament games", (
        ("fall apart quickly", "develop knights early|castle before attacking|occupy central squares"),
        ("end in blunders", "scan for hanging pieces|count attackers twice|pause before moving"),
        ("feel aimless", "study pawn structures|form a plan|review master games"),
    ), "cheat with a hidden earpiece|throw the board at opponents",
        "tabletop hobbies are for nerds.|grandmasters know, i do not.",
        "my grandpa whittled rooks.|the longest game lasted twenty hours."),
    _theme("photography", "taking photos", "portraits|landscapes|night shots|sunsets", (
        ("come out blurry", "use a tripod|raise shutter speed|tap to focus"),
        ("look too dark", "widen the aperture|boost iso slightly|expose for shadows"),
        ("look flat and dull", "shoot at golden hour|use side lighting|add a foreground subject"),
    ), "trespass on private property|photograph strangers secretly",
        "phones do everything now, shrug.|art is meaningless anyway.",
        "my first camera was a polaroid.|daguerre invented early plates."),
    _theme("budget", "my monthly budget", "savings|bills|groceries|expenses", (
        ("keep running out", "track every purchase|automate transfers each paycheck"
                             "|cap discretionary spending"),
        ("grow every month", "cancel idle subscriptions|compare insurance quotes|negotiate rates"),
        ("feel chaotic", "use envelope categories|build an emergency fund|review statements"),
    ), "borrow from payday lenders|gamble the rent money",
        "money talk makes me nervous.|accountants exist for that.",
        "my uncle collects rare coins.|ancient soldiers were paid in barley."),
    _theme("interview", "job interviews", "phone screens|panel interviews|video calls|final rounds", (
        ("make me nervous", "rehearse answers aloud|arrive early|breathe deeply beforehand"),
        ("go badly", "research the company|prepare star stories|ask thoughtful questions"),
        ("end without offers", "send thank you notes|request feedback politely|follow up promptly"),
    ), "lie about your degree|badmouth your former boss",
        "careers are a scam anyway.|recruiters ghost everyone, why bother.",
        "i sold lemonade as a kid.|neckties were invented in croatia."),
    _theme("spanish", "learning spanish", "vocabulary|grammar|listening|pronunciation", (
        ("is not improving", "practice flashcards|read graded readers|label household items"),
        ("falls apart in conversations", "join a language exchange|shadow native podcasts"
                                         "|learn filler phrases"),
        ("fades quickly", "review with spaced repetition|watch telenovelas|journal in spanish"),
    ), "study while driving|copy a classmate's exam",
        "english is enough for everyone.|languages are impossible past childhood.",
        "my teacher once lived in peru.|castilian has a lisping sound."),
    _theme("cat", "my cat", "kitten|tabby|siamese|persian", (
        ("scratches the couch", "provide a sisal post|trim its claws|use double sided tape"),
        ("ignores the litter tray", "scoop twice daily|try unscented litter|see a vet"),
        ("wakes me at night", "play before bedtime|feed a late meal|ignore meowing"),
    ), "declaw it at home|give it lily bouquets",
        "cats are plotting against us.|i only like hamsters.",
        "egyptians worshipped feline gods.|my neighbor feeds twenty strays."),
    _theme("chickens", "my backyard chickens", "hens|pullets|bantams|layers", (
        ("stopped laying", "add supplemental light|feed layer pellets|powder for mites"),
        ("peck each other", "expand the coop|hang cabbage heads|separate the bully"),
        ("escape the run", "clip one wing|raise the fence|cover the top with netting"),
    ), "leave the henhouse unlatched for foxes|feed them moldy scraps",
        "birds freak me out.|farmers know, go ask one.",
        "my rooster is named gregory.|dinosaurs evolved into poultry."),
    _theme("swimming", "swimming laps", "freestyle|backstroke|breaststroke|butterfly", (
        ("feels exhausting", "exhale underwater steadily|kick from the hips|slow your turnover"),
        ("fogs my goggles", "rinse goggles with baby shampoo|buy antifog lenses|adjust the strap"),
        ("hurts my shoulders", "rotate your torso|widen your entry|add dryland bands"),
    ), "swim alone in rough waves|hold breath until passing out",
        "i sink like a rock, no clue.|lifeguards get paid for that.",
        "michael phelps eats pasta constantly.|my town pool has a green slide."),
    _theme("skateboarding", "skateboarding", "ollies|kickflips|grinds|manuals", (
        ("feel wobbly", "crouch before popping|center your weight|loosen the trucks"),
        ("land badly", "look at the landing|commit without hesitation|practice on grass"),
        ("scare me", "wear a helmet|start in a parking lot|film your progress"),
    ), "hitch rides behind buses|bomb steep streets blindfolded",
        "skating is a fad, forget it.|teenagers do that, not me.",
        "my cousin sponsors a surf shop.|tony hawk landed the nine hundred."),
    _theme("fireplace", "my fireplace", "chimney|wood stove|hearth|fire pit", (
        ("smokes up the room", "open the flue|warm the chimney first|burn seasoned hardwood"),
        ("gives little heat", "use dry split logs|install a heat reflector|seal gaps near dampers"),
        ("has a sooty window", "burn hotter fires|wipe with ash paste|avoid smoldering overnight"),
    ), "toss treated pallets in|squirt kerosene on embers",
        "i only use baseboard heaters.|firewood is messy, skip it.",
        "my grandfather was a lumberjack.|romans heated floors with hypocausts."),
)
