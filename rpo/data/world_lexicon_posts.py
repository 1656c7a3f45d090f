"""Word lists of the generated summarisation world (TL;DR stand-in).

Each theme is one prompt cluster: a kind of post with six key facts (a post states a few of them)
and four filler sentences (a post carries some). A fact is (sentence, summary phrase); the phrase
is made of the sentence's words, so a good summary can be copied out of the post. Summary phrases
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


POST_FRAME = "subreddit: r/{subreddit}\ntitle: {title}\npost: {body}\ntl;dr:"
SUMMARY_JOINERS = (", ", "; ")

POST_THEMES: tuple[PostTheme, ...] = (
    _theme("roommates", "roommates", "my roommate is driving me up the wall|roommate problems, need advice", """
        my roommate skipped rent this year.|roommate skipped rent
        she leaves dirty dishes in the sink for days.|dirty dishes in sink
        her boyfriend basically moved in without asking.|boyfriend moved in
        our lease ends in august.|lease ends august
        she blasts music after midnight.|blasts music after midnight
        she eats my groceries without asking.|eats my groceries""", """
        we met through a craigslist ad.|craigslist ad
        the apartment has a nice balcony.|nice balcony
        i am studying to become a pharmacist.|studying pharmacist
        my hometown is two hours away.|hometown hours away"""),
    _theme("job_offer", "careerguidance", "torn between two job offers|should i take the new job offer", """
        the new offer pays fifteen percent more.|new offer pays more
        my current manager promised a promotion soon.|manager promised promotion
        the new role requires a long commute.|role requires long commute
        my current team is very supportive.|team supportive
        the startup has uncertain funding.|startup uncertain funding
        i would lose my pension vesting.|lose pension vesting""", """
        i graduated with an accounting degree.|accounting degree
        my desk faces a big window.|desk window
        i usually bring leftovers for lunch.|leftovers lunch
        our office has a ping pong table.|ping pong table"""),
    _theme("neighbors", "neighbors", "my upstairs neighbor stomps all night|how to deal with a noisy neighbor", """
        my upstairs neighbor stomps around late every night.|upstairs neighbor stomps late
        he never answered my polite note.|never answered polite note
        the superintendent ignores my emails.|superintendent ignores emails
        i work early shifts at the hospital.|early hospital shifts
        i recorded the noise on my phone.|recorded noise
        quiet hours start at ten.|quiet hours start ten""", """
        the hallway carpet is mustard yellow.|mustard yellow carpet
        my building was built in the seventies.|built seventies
        i have a small bonsai tree.|bonsai tree
        my favorite show is about baking.|favorite show baking"""),
    _theme("wedding", "weddingplanning", "wedding planning is ruining my family|help with wedding guest drama", """
        my mom wants to invite forty extra guests.|mom wants extra guests
        our venue has limited capacity.|venue limited capacity
        my fiance refuses to cut his friends.|fiance refuses cut friends
        we already paid a nonrefundable deposit.|paid nonrefundable deposit
        the wedding is in june.|wedding june
        my cousin insists on bringing toddlers.|cousin bringing toddlers""", """
        i picked lavender as our color.|lavender color
        we met at a salsa class.|salsa class
        my dress has lace sleeves.|lace sleeves
        the florist is very chatty.|chatty florist"""),
    _theme("accident", "insurance", "got rear ended and insurance is stalling|insurance claim after a fender bender", """
        another driver rear ended me at a stoplight.|driver rear ended me
        the police report says he was at fault.|police report says fault
        his insurer has not called back in weeks.|insurer not called back
        my bumper repair estimate is two thousand dollars.|bumper repair estimate
        my neck has been sore since.|neck sore
        i have photos of the damage.|photos damage""", """
        it was a sunny tuesday afternoon.|sunny tuesday
        i was listening to a true crime podcast.|crime podcast
        my car is bright red.|bright red
        i was heading to yoga.|heading yoga"""),
    _theme("loan", "friendship", "my best friend will not pay me back|friend borrowed money and disappeared", """
        i lent my friend money in march.|lent friend money
        he promised to repay by summer.|promised repay summer
        he just bragged about a cruise.|bragged cruise
        he stopped answering my texts.|stopped answering texts
        we have been buddies since kindergarten.|buddies since kindergarten
        my tuition payment is due soon.|tuition due soon""", """
        he has a golden retriever named max.|golden retriever
        we both love hiking.|love hiking
        i drive a blue hatchback.|blue hatchback
        my apartment smells like cinnamon.|smells cinnamon"""),
    _theme("major", "college", "which major should i pick|stuck choosing a college major", """
        my parents insist i study nursing.|parents insist nursing
        i adore my art history seminars.|adore art history
        museum jobs pay poorly here.|museum jobs pay poorly
        i failed chemistry last semester.|failed chemistry
        my scholarship requires a declared major soon.|scholarship requires declared major
        my advisor suggested a minor.|advisor suggested minor""", """
        my dorm is next to the library.|dorm library
        i play intramural volleyball.|intramural volleyball
        the dining hall serves great tacos.|dining hall tacos
        my suitemate is from alaska.|suitemate alaska"""),
    _theme("gym", "fitness", "stuck on a strength plateau|no gains after months of lifting", """
        my bench press stalled for three months.|bench press stalled
        i lift weights five days a week.|lift weights five days
        i sleep about five hours a night.|sleep five hours
        i eat very little protein.|little protein
        i never schedule deload weeks.|never schedule deload
        my squat is improving slowly.|squat improving""", """
        my gym plays terrible techno.|terrible techno
        i own purple sneakers.|purple sneakers
        my gym buddy is a firefighter.|buddy firefighter
        the lockers are always freezing.|freezing lockers"""),
    _theme("breakup", "breakups", "my girlfriend ended things out of nowhere|how do i get over this breakup", """
        my girlfriend of three years broke up with me.|girlfriend broke up
        she said she felt neglected.|felt neglected
        we still share a savings account.|share savings account
        she already has a new partner.|new partner
        i keep checking her social media.|checking social media
        our anniversary is next week.|anniversary next week""", """
        we bought a fern together.|bought fern
        i stock shelves at a warehouse.|warehouse shelves
        her favorite band is coldplay.|coldplay
        it snowed the day she left.|snowed"""),
    _theme("inlaws", "justnomil", "my in-laws are staying for a month|mother in law overstaying her visit", """
        my in-laws are staying with us for a month.|in-laws staying month
        my mother in law rearranges my kitchen.|rearranges kitchen
        she criticizes my parenting constantly.|criticizes parenting
        my husband avoids confronting her.|husband avoids confronting
        our guest room is tiny.|guest room tiny
        i telecommute full time.|telecommute""", """
        she brought three suitcases.|three suitcases
        our walls are painted beige.|beige walls
        she loves crossword puzzles.|crossword puzzles
        we live near a lake.|near lake"""),
    _theme("rescue_dog", "dogs", "not sure the rescue dog is working out|adopted a rescue and feeling overwhelmed", """
        we adopted a rescue dog last month.|adopted rescue dog
        he growls at my toddler.|growls toddler
        he has separation anxiety.|separation anxiety
        the shelter offered a trainer.|shelter offered trainer
        my wife wants to return him.|wife wants return
        he destroyed our couch cushions.|destroyed couch cushions""", """
        he is mostly black with white paws.|white paws
        our yard has a rusty swing set.|rusty swing
        i grew up with cats.|grew up cats
        we named him biscuit.|named biscuit"""),
    _theme("coworker", "work", "coworker keeps taking credit for my work|colleague stole credit in a meeting", """
        my coworker presented my analysis as hers.|coworker presented analysis
        our boss praised her in the meeting.|boss praised her
        i saved drafts with timestamps.|saved drafts timestamps
        performance reviews happen next month.|performance reviews
        she pulled this stunt before.|pulled stunt before
        hr seems useless here.|hr useless""", """
        our office moved to a new floor.|office moved floor
        i bring my own tea bags.|tea bags
        my cubicle is next to the printer.|cubicle printer
        we have casual fridays.|casual fridays"""),
    _theme("relocation", "moving", "should i move across the country|thinking about relocating for a fresh start", """
        i got accepted to a program in denver.|accepted program denver
        my whole family lives in ohio.|family lives ohio
        housing there costs double.|housing costs double
        my fiancee cannot relocate.|fiancee cannot relocate
        i feel lonely here lately.|feel lonely
        the program starts in september.|starts september""", """
        i collect vintage postcards.|vintage postcards
        my car needs new tires.|new tires
        i drink too much iced coffee.|iced coffee
        our street has giant sunflowers.|giant sunflowers"""),
    _theme("dating", "onlinedating", "online dating is draining me|no luck on dating apps", """
        i have been on dating apps for a year.|dating apps year
        most matches never reply.|matches never reply
        i went on five first dates.|five first dates
        one guy showed up drunk.|guy showed up drunk
        my profile lists my hobbies.|profile lists hobbies
        my coworkers say i am too picky.|too picky""", """
        i have a pet iguana.|pet iguana
        i teach middle school geography.|teach geography
        my apartment is above a bakery.|above bakery
        i recently learned to juggle.|learned juggle"""),
    _theme("inheritance", "legaladvice", "family fighting over grandma's house|inheritance dispute with my siblings", """
        my grandmother left her house to three grandkids.|grandmother left house
        my brother occupies it without paying.|brother occupies without paying
        my aunt wants to sell immediately.|aunt wants sell
        the will names no executor.|will names no executor
        property taxes are overdue.|property taxes overdue
        a lawyer quoted a high fee.|lawyer quoted fee""", """
        grandma loved her rose garden.|rose garden
        the porch has green shutters.|green shutters
        i live three states away.|states away
        we used to spend christmas there.|christmas"""),
    _theme("warranty", "consumeradvice", "store refuses to honor my phone warranty|warranty claim denied for cracked phone", """
        my phone screen cracked after two weeks.|phone screen cracked
        i bought the extended warranty.|bought extended warranty
        the store says drops are not covered.|drops not covered
        i never dropped it.|never dropped
        the manufacturer blames the retailer.|manufacturer blames retailer
        i kept the original receipt.|kept receipt""", """
        my case is shaped like a cactus.|cactus case
        i mostly use it for audiobooks.|audiobooks
        the mall was crowded.|crowded mall
        my last one was teal.|teal"""),
    _theme("group_project", "gradschool", "group project partners are doing nothing|carrying my whole group project", """
        our group presentation is due friday.|presentation due friday
        two members ignore the group chat.|members ignore chat
        i drafted most slides alone.|drafted slides alone
        the professor grades everyone equally.|professor grades equally
        peer evaluations are optional.|peer evaluations optional
        one member copied text from wikipedia.|copied wikipedia""", """
        our classroom has broken blinds.|broken blinds
        i drink energy drinks while studying.|energy drinks
        the campus has many squirrels.|campus squirrels
        my laptop sticker says hello.|laptop sticker"""),
    _theme("refund", "travel", "airline will not refund my cancelled trip|fighting for a travel refund", """
        the airline cancelled my flight to lisbon.|airline cancelled flight
        they issued only a travel voucher.|issued voucher
        i booked with a credit card.|booked credit card
        the hotel kept my prepayment.|hotel kept prepayment
        customer service hung up twice.|customer service hung up
        the rules require refunds for cancellations.|rules require refunds""", """
        i wanted to see the tiled castles.|tiled castles
        i speak some portuguese.|speak portuguese
        my suitcase is neon orange.|neon suitcase
        i love custard tarts.|custard tarts"""),
    _theme("tutoring", "parenting", "my son is falling behind in math|is a tutor worth it for my kid", """
        my son is failing fourth grade math.|son failing math
        his teacher recommended a tutor.|teacher recommended tutor
        private lessons cost sixty dollars hourly.|lessons cost hourly
        he cries during homework.|cries during homework
        his school offers free help after class.|school offers free help
        his dad thinks he will catch up.|dad thinks catch up""", """
        he loves dinosaur cartoons.|dinosaur cartoons
        we have a minivan.|minivan
        his favorite food is spaghetti.|spaghetti
        i work in logistics.|logistics"""),
    _theme("mold", "renting", "mold in my apartment and landlord ignores it|black mold in my rental", """
        there is black mold in my bathroom.|black mold bathroom
        the landlord ignored three repair requests.|landlord ignored requests
        my daughter has asthma.|daughter asthma
        my contract runs until december.|contract runs december
        i documented everything with pictures.|documented pictures
        a tenant union exists in my city.|tenant union""", """
        the building has a cute mailbox.|cute mailbox
        i play the cello.|cello
        my street floods sometimes.|street floods
        i just started pottery.|pottery"""),
    _theme("side_business", "smallbusiness", "my candle side business is taking off|should i quit my job for my side hustle", """
        i sell handmade candles online.|sell handmade candles
        sales doubled over the holidays.|sales doubled holidays
        my day job pays the mortgage.|day job mortgage
        i have no health insurance yet.|no health insurance
        my spouse supports quitting.|spouse supports quitting
        wax prices keep rising.|wax prices rising""", """
        my studio is in the garage.|garage studio
        i listen to jazz while pouring.|jazz
        my logo is a little fox.|fox logo
        i started during lockdown.|lockdown"""),
    _theme("sibling", "family", "my sister always competes with me|sibling jealousy is ruining holidays", """
        my older sister mocks my career.|sister mocks career
        our father compares us constantly.|father compares
        she missed my graduation.|missed graduation
        she announced her pregnancy at my party.|announced pregnancy
        thanksgiving is hosted by her this year.|thanksgiving hosted
        i want to set boundaries.|set boundaries""", """
        she drives a jeep.|jeep
        we shared a bunk bed growing up.|bunk bed
        i am an accountant.|accountant
        my nephew loves trains.|nephew trains"""),
    _theme("hoa", "hoa", "hoa fined me for my fence|fighting an unfair hoa violation", """
        the hoa fined me for my fence.|hoa fined fence
        the previous owner painted it.|previous owner painted
        the bylaws never mention colors.|bylaws never mention colors
        three nearby homes share that shade.|nearby homes share shade
        the fine doubles every month.|fine doubles
        the board president dislikes me.|board president dislikes""", """
        i grow tomatoes in pots.|tomatoes pots
        my dog barks at the mail carrier.|mail carrier
        we moved here from texas.|texas
        the pool closes at eight.|pool closes"""),
    _theme("medical_bill", "healthinsurance", "surprise hospital bill after urgent care|billed for an out of network doctor", """
        i went to an in network urgent care.|network urgent care
        the radiologist billed separately.|radiologist billed separately
        the bill is four thousand dollars.|bill four thousand
        i appealed once already.|appealed once
        my deductible is already met.|deductible met
        the clinic never warned me.|clinic never warned""", """
        i had sprained my wrist skateboarding.|sprained wrist
        the waiting room had aquariums.|waiting aquariums
        my nurse had cool tattoos.|cool tattoos
        it was raining heavily.|raining heavily"""),
)
