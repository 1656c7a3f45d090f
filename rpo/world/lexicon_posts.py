"""Word lists of the generated summarisation world (TL;DR stand-in).

Each theme is one prompt cluster: a kind of post with six key facts (a post states a few of them)
and four filler sentences (a post carries some). A fact is (sentence, summary phrase); the phrase
is a contiguous run of the sentence's words, so a good summary copies spans out of the post (what a
small model's attention learns first) rather than recalling the theme's facts from memory. Summary phrases
of different themes share no content word, and within a theme no two phrases share one, so the
reward can tell a kept fact from a missed, a hallucinated or a filler one.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PostTheme:
    name: str
    subreddit: str
    titles: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]  # (sentence, summary phrase)
    fillers: tuple[tuple[str, str], ...]  # (sentence, what a bad summary keeps of it)


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    pairs = []
    for item in text.strip().split("\n"):
        sentence, phrase = item.split("|")
        pairs.append((sentence.strip(), phrase.strip()))
    return tuple(pairs)


def _theme(name, subreddit, titles, facts, fillers) -> PostTheme:
    return PostTheme(name, subreddit, tuple(titles.split("|")), _pairs(facts), _pairs(fillers))


# The OpenAI TL;DR format, as rpo.data.loaders.tldr_prompt_text writes a hub row: exported world posts
# load back as the same prompt (rpo.world.export), so the oracle judges the rehearsal's hub data too.
POST_FRAME = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {body}\nTL;DR:"
SUMMARY_JOINERS = (", ", "; ")

POST_THEMES: tuple[PostTheme, ...] = (
    _theme("roommates", "roommates", "my roommate is driving me up the wall|roommate problems, need advice", """
        my roommate skipped rent this year.|roommate skipped rent
        she leaves dirty dishes in the sink for days.|dirty dishes in the sink
        her boyfriend basically moved in without asking.|boyfriend basically moved in
        our lease ends in august.|lease ends in august
        she blasts music after midnight.|blasts music after midnight
        she eats my groceries without asking.|eats my groceries""", """
        we met through a craigslist ad.|craigslist ad
        the apartment has a nice balcony.|nice balcony
        i am studying to become a pharmacist.|studying to become a pharmacist
        my hometown is two hours away.|hometown is two hours away"""),
    _theme("job_offer", "careerguidance", "torn between two job offers|should i take the new job offer", """
        the new offer pays fifteen percent more.|new offer pays fifteen percent more
        my current manager promised a promotion soon.|manager promised a promotion
        the new role requires a long commute.|role requires a long commute
        my current team is very supportive.|team is very supportive
        the startup has uncertain funding.|startup has uncertain funding
        i would lose my pension vesting.|lose my pension vesting""", """
        i graduated with an accounting degree.|accounting degree
        my desk faces a big window.|desk faces a big window
        i usually bring leftovers for lunch.|leftovers for lunch
        our office has a ping pong table.|ping pong table"""),
    _theme("neighbors", "neighbors", "my upstairs neighbor stomps all night|how to deal with a noisy neighbor", """
        my upstairs neighbor stomps around late every night.|upstairs neighbor stomps around late
        he never answered my polite note.|never answered my polite note
        the superintendent ignores my emails.|superintendent ignores my emails
        i work early shifts at the hospital.|early shifts at the hospital
        i recorded the noise on my phone.|recorded the noise
        quiet hours start at ten.|quiet hours start at ten""", """
        the hallway carpet is mustard yellow.|carpet is mustard yellow
        my building was built in the seventies.|built in the seventies
        i have a small bonsai tree.|bonsai tree
        my favorite show is about baking.|favorite show is about baking"""),
    _theme("wedding", "weddingplanning", "wedding planning is ruining my family|help with wedding guest drama", """
        my mom wants to invite forty extra guests.|mom wants to invite forty extra guests
        our venue has limited capacity.|venue has limited capacity
        my fiance refuses to cut his friends.|fiance refuses to cut his friends
        we already paid a nonrefundable deposit.|paid a nonrefundable deposit
        the wedding is in june.|wedding is in june
        my cousin insists on bringing toddlers.|cousin insists on bringing toddlers""", """
        i picked lavender as our color.|lavender as our color
        we met at a salsa class.|salsa class
        my dress has lace sleeves.|lace sleeves
        the florist is very chatty.|florist is very chatty"""),
    _theme("accident", "insurance", "got rear ended and insurance is stalling|insurance claim after a fender bender", """
        another driver rear ended me at a stoplight.|driver rear ended me
        the police report says he was at fault.|police report says he was at fault
        his insurer has not called back in weeks.|insurer has not called back
        my bumper repair estimate is two thousand dollars.|bumper repair estimate
        my neck has been sore since.|neck has been sore
        i have photos of the damage.|photos of the damage""", """
        it was a sunny tuesday afternoon.|sunny tuesday
        i was listening to a true crime podcast.|crime podcast
        my car is bright red.|bright red
        i was heading to yoga.|heading to yoga"""),
    _theme("loan", "friendship", "my best friend will not pay me back|friend borrowed money and disappeared", """
        i lent my friend money in march.|lent my friend money
        he promised to repay by summer.|promised to repay by summer
        he just bragged about a cruise.|bragged about a cruise
        he stopped answering my texts.|stopped answering my texts
        we have been buddies since kindergarten.|buddies since kindergarten
        my tuition payment is due soon.|tuition payment is due soon""", """
        he has a golden retriever named max.|golden retriever
        we both love hiking.|love hiking
        i drive a blue hatchback.|blue hatchback
        my apartment smells like cinnamon.|smells like cinnamon"""),
    _theme("major", "college", "which major should i pick|stuck choosing a college major", """
        my parents insist i study nursing.|parents insist i study nursing
        i adore my art history seminars.|adore my art history
        museum jobs pay poorly here.|museum jobs pay poorly
        i failed chemistry last semester.|failed chemistry
        my scholarship requires a declared major soon.|scholarship requires a declared major
        my advisor suggested a minor.|advisor suggested a minor""", """
        my dorm is next to the library.|dorm is next to the library
        i play intramural volleyball.|intramural volleyball
        the dining hall serves great tacos.|dining hall serves great tacos
        my suitemate is from alaska.|suitemate is from alaska"""),
    _theme("gym", "fitness", "stuck on a strength plateau|no gains after months of lifting", """
        my bench press stalled for three months.|bench press stalled
        i lift weights five days a week.|lift weights five days
        i sleep about five hours a night.|sleep about five hours
        i eat very little protein.|little protein
        i never schedule deload weeks.|never schedule deload
        my squat is improving slowly.|squat is improving""", """
        my gym plays terrible techno.|terrible techno
        i own purple sneakers.|purple sneakers
        my gym buddy is a firefighter.|buddy is a firefighter
        the lockers are always freezing.|lockers are always freezing"""),
    _theme("breakup", "breakups", "my girlfriend ended things out of nowhere|how do i get over this breakup", """
        my girlfriend of three years broke up with me.|girlfriend of three years broke up
        she said she felt neglected.|felt neglected
        we still share a savings account.|share a savings account
        she already has a new partner.|new partner
        i keep checking her social media.|checking her social media
        our anniversary is next week.|anniversary is next week""", """
        we bought a fern together.|bought a fern
        i stock shelves at a warehouse.|shelves at a warehouse
        her favorite band is coldplay.|coldplay
        it snowed the day she left.|snowed"""),
    _theme("inlaws", "justnomil", "my in-laws are staying for a month|mother in law overstaying her visit", """
        my in-laws are staying with us for a month.|in laws are staying with us for a month
        my mother in law rearranges my kitchen.|rearranges my kitchen
        she criticizes my parenting constantly.|criticizes my parenting
        my husband avoids confronting her.|husband avoids confronting
        our guest room is tiny.|guest room is tiny
        i telecommute full time.|telecommute""", """
        she brought three suitcases.|three suitcases
        our walls are beige.|walls are beige
        she loves crossword puzzles.|crossword puzzles
        we live near a lake.|near a lake"""),
    _theme("rescue_dog", "dogs", "not sure the rescue dog is working out|adopted a rescue and feeling overwhelmed", """
        we adopted a rescue dog last month.|adopted a rescue dog
        he growls at my toddler.|growls at my toddler
        he has separation anxiety.|separation anxiety
        the shelter offered a trainer.|shelter offered a trainer
        my wife wants to return him.|wife wants to return
        he destroyed our couch cushions.|destroyed our couch cushions""", """
        he is mostly black with white paws.|white paws
        our yard has a rusty swing set.|rusty swing
        i grew up with cats.|grew up with cats
        we named him biscuit.|named him biscuit"""),
    _theme("coworker", "work", "coworker keeps taking credit for my work|colleague stole credit in a meeting", """
        my coworker presented my analysis as hers.|coworker presented my analysis
        our boss praised her in the meeting.|boss praised her
        i saved drafts with timestamps.|saved drafts with timestamps
        performance reviews happen next month.|performance reviews
        she pulled this stunt before.|pulled this stunt before
        hr seems useless here.|hr seems useless""", """
        our office moved to a new floor.|office moved to a new floor
        i bring my own tea bags.|tea bags
        my cubicle is next to the printer.|cubicle is next to the printer
        we have casual fridays.|casual fridays"""),
    _theme("relocation", "moving", "should i move across the country|thinking about relocating for a fresh start", """
        i got accepted to a program in denver.|accepted to a program in denver
        my whole family lives in ohio.|family lives in ohio
        housing there costs double.|housing there costs double
        my fiancee cannot relocate.|fiancee cannot relocate
        i feel lonely here lately.|feel lonely
        the program starts in september.|starts in september""", """
        i collect vintage postcards.|vintage postcards
        my car needs new tires.|new tires
        i drink too much iced coffee.|iced coffee
        our street has giant sunflowers.|giant sunflowers"""),
    _theme("dating", "onlinedating", "online dating is draining me|no luck on dating apps", """
        i have been on dating apps for a year.|dating apps for a year
        most matches never reply.|matches never reply
        i went on five first dates.|five first dates
        one guy showed up drunk.|guy showed up drunk
        my profile lists my hobbies.|profile lists my hobbies
        my coworkers say i am too picky.|too picky""", """
        i have a pet iguana.|pet iguana
        i teach geography to middle schoolers.|teach geography
        my apartment is above a bakery.|above a bakery
        i recently learned to juggle.|learned to juggle"""),
    _theme("inheritance", "legaladvice", "family fighting over grandma's house|inheritance dispute with my siblings", """
        my grandmother left her house to three grandkids.|grandmother left her house
        my brother occupies it without paying.|brother occupies it without paying
        my aunt wants to sell immediately.|aunt wants to sell
        the will names no executor.|will names no executor
        property taxes are overdue.|property taxes are overdue
        a lawyer quoted a high fee.|lawyer quoted a high fee""", """
        grandma loved her rose garden.|rose garden
        the porch has green shutters.|green shutters
        i live three states away.|states away
        we used to spend christmas there.|christmas"""),
    _theme("warranty", "consumeradvice", "store refuses to honor my phone warranty|warranty claim denied for cracked phone", """
        my phone screen cracked after two weeks.|phone screen cracked
        i bought the extended warranty.|bought the extended warranty
        the store says drops are not covered.|drops are not covered
        i never dropped it.|never dropped
        the manufacturer blames the retailer.|manufacturer blames the retailer
        i kept the original receipt.|kept the original receipt""", """
        my case is shaped like a cactus.|case is shaped like a cactus
        i mostly use it for audiobooks.|audiobooks
        the mall was crowded.|mall was crowded
        my last one was teal.|teal"""),
    _theme("group_project", "gradschool", "group project partners are doing nothing|carrying my whole group project", """
        our group presentation is due friday.|presentation is due friday
        two members ignore the group chat.|members ignore the group chat
        i drafted most slides alone.|drafted most slides alone
        the professor grades everyone equally.|professor grades everyone equally
        peer evaluations are optional.|peer evaluations are optional
        one member copied text from wikipedia.|copied text from wikipedia""", """
        our classroom has broken blinds.|broken blinds
        i drink energy drinks while studying.|energy drinks
        the campus has many squirrels.|campus has many squirrels
        my laptop sticker says hello.|laptop sticker"""),
    _theme("refund", "travel", "airline will not refund my cancelled trip|fighting for a travel refund", """
        the airline cancelled my flight to lisbon.|airline cancelled my flight
        they issued only a travel voucher.|issued only a travel voucher
        i booked with a credit card.|booked with a credit card
        the hotel kept my prepayment.|hotel kept my prepayment
        customer service hung up twice.|customer service hung up
        the rules require refunds for cancellations.|rules require refunds""", """
        i wanted to see the tiled castles.|tiled castles
        i speak some portuguese.|speak some portuguese
        my suitcase is neon orange.|suitcase is neon
        i love custard tarts.|custard tarts"""),
    _theme("tutoring", "parenting", "my son is falling behind in math|is a tutor worth it for my kid", """
        my son is failing fourth grade math.|son is failing fourth grade math
        his teacher recommended a tutor.|teacher recommended a tutor
        private lessons cost sixty dollars hourly.|lessons cost sixty dollars hourly
        he cries during homework.|cries during homework
        his school offers free help after class.|school offers free help
        his dad thinks he will catch up.|dad thinks he will catch up""", """
        he loves dinosaur cartoons.|dinosaur cartoons
        we have a minivan.|minivan
        his favorite food is spaghetti.|spaghetti
        i work in logistics.|logistics"""),
    _theme("mold", "renting", "mold in my apartment and landlord ignores it|black mold in my rental", """
        there is black mold in my bathroom.|black mold in my bathroom
        the landlord ignored my requests for months.|landlord ignored my requests
        my daughter has asthma.|daughter has asthma
        my contract runs until december.|contract runs until december
        i documented everything with pictures.|documented everything with pictures
        a tenant union exists in my city.|tenant union""", """
        the building has a cute mailbox.|cute mailbox
        i play the cello.|cello
        my street floods sometimes.|street floods
        i just started pottery.|pottery"""),
    _theme("side_business", "smallbusiness", "my candle side business is taking off|should i quit my job for my side hustle", """
        i sell handmade candles online.|sell handmade candles
        sales doubled over the holidays.|sales doubled over the holidays
        my day job covers the mortgage.|day job covers the mortgage
        i have no health insurance yet.|no health insurance
        my spouse supports quitting.|spouse supports quitting
        wax prices keep rising.|wax prices keep rising""", """
        my studio is in the garage.|studio is in the garage
        i listen to jazz while pouring.|jazz
        my logo is a little fox.|logo is a little fox
        i started during lockdown.|lockdown"""),
    _theme("sibling", "family", "my sister always competes with me|sibling jealousy is ruining holidays", """
        my older sister mocks my career.|sister mocks my career
        our father compares us constantly.|father compares
        she missed my graduation.|missed my graduation
        she announced her pregnancy at my party.|announced her pregnancy
        thanksgiving is hosted by her this year.|thanksgiving is hosted
        i want to set boundaries.|set boundaries""", """
        she drives a jeep.|jeep
        we shared a bunk bed growing up.|bunk bed
        i am an accountant.|accountant
        my nephew loves trains.|nephew loves trains"""),
    _theme("hoa", "hoa", "hoa fined me for my fence|fighting an unfair hoa violation", """
        the hoa fined me for my fence.|hoa fined me for my fence
        the previous owner painted it.|previous owner painted
        the bylaws never mention colors.|bylaws never mention colors
        three nearby homes share that shade.|nearby homes share that shade
        the fine doubles every month.|fine doubles
        the board president dislikes me.|board president dislikes""", """
        i grow tomatoes in pots.|tomatoes in pots
        my dog barks at the mail carrier.|mail carrier
        we moved here from texas.|texas
        the pool closes at eight.|pool closes"""),
    _theme("medical_bill", "healthinsurance", "surprise hospital bill after urgent care|billed for an out of network doctor", """
        i went to an in network urgent care.|network urgent care
        the radiologist billed separately.|radiologist billed separately
        the bill is four thousand dollars.|bill is four thousand
        i appealed once already.|appealed once
        my deductible is already met.|deductible is already met
        the clinic never warned me.|clinic never warned""", """
        i had sprained my wrist skateboarding.|sprained my wrist
        the waiting area had aquariums.|waiting area had aquariums
        my nurse had cool tattoos.|cool tattoos
        it was raining heavily.|raining heavily"""),
)
