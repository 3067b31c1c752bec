"""Generate the synthetic "extract" dataset for ftkit (customer-service field extraction).

Each row is a customer message to the Northwind Goods shop and the structured fields a
model should extract from it, always with all four keys in this order::

    {"text": "<customer message>",
     "fields": {"intent": ..., "order_id": ..., "product": ..., "email": ...}}

* ``intent``   one of the ten strings in ``INTENTS``
* ``order_id`` ``"NW-"`` plus six digits when the message mentions an order number, else null
* ``product``  the product named in the message, lower case, else null
* ``email``    the email address in the message, else null

Messages are composed from parts (opener, body, detail sentence, order/email sentence,
closing), with occasional typos, all-lower-case writing, names and varied lengths. Every
non-null field value appears verbatim in its message (the product case-insensitively), and
a null field means the message does not contain that information. Intents are exactly
balanced within each split, and field presence is assigned by per-split quotas.

Every message text is unique across the three splits, and so is the template skeleton it
was filled from (the message before product, order id, email, names and typos are put in),
so validation and test share no message text with train and no near-duplicate that differs
only in slot values.

Deterministic (``random.Random(SEED)``), stdlib only. Run from the repository root::

    python data/extract/generate.py

It writes ``train.jsonl``, ``validation.jsonl`` and ``test.jsonl`` next to this file.
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

SEED = 20240611
OUT_DIR = Path(__file__).resolve().parent
SPLITS: tuple[tuple[str, int], ...] = (("train", 480), ("validation", 60), ("test", 160))
MAX_CHARS = 400
MAX_TRIES = 500

INTENTS: tuple[str, ...] = (
    "track_order",
    "cancel_order",
    "return_item",
    "refund_status",
    "change_address",
    "damaged_item",
    "missing_item",
    "billing_issue",
    "account_access",
    "product_question",
)

# Natural written form; the extracted value is always ``.lower()`` of these.
PRODUCTS: tuple[str, ...] = (
    "wool winter coat", "French press", "round wall mirror", "portable power bank",
    "glass water pitcher", "merino wool sweater", "linen shirt", "HD webcam",
    "USB-C wall charger", "smart plug two-pack", "stoneware mug set", "memory foam pillow",
    "hiking socks three-pack", "ceramic dinner plate set", "electric kettle",
    "linen duvet cover", "air fryer", "wrap dress", "waffle shower curtain",
    "bluetooth speaker", "canvas tote bag", "brass table lamp", "set of wine glasses",
    "LED desk lamp", "bamboo cutting board", "canvas baseball cap", "cashmere scarf",
    "cast-iron skillet", "ceramic planter", "coffee grinder", "e-reader", "enamel Dutch oven",
    "fitness smartwatch", "flannel pajama set", "glass food storage set", "hair dryer",
    "jute area rug", "knife block set", "leather belt", "pair of chino shorts",
    "pair of running shoes", "pair of slim-fit jeans", "pair of wireless earbuds",
    "pedal trash can", "puffer vest", "robot vacuum", "scented candle trio",
    "set of oak picture frames", "soundbar", "standing coat rack", "wireless mouse",
    "zip-up hoodie", "knit throw blanket", "rain jacket", "walnut serving tray",
    "mechanical keyboard", "yoga mat", "stainless steel water bottle", "velvet throw pillow",
    "hand blender", "espresso machine", "weighted blanket", "terracotta plant pot",
    "noise-cancelling headphones", "leather wallet", "silk pillowcase", "down comforter",
    "toaster oven", "digital kitchen scale", "pour-over coffee kit", "bath towel set",
    "desk organizer", "folding step stool", "camping lantern", "insulated lunch bag",
    "corduroy jacket", "ankle boots", "denim overshirt", "wall clock", "tea infuser set",
    "rice cooker", "laptop sleeve", "magnetic knife strip", "duffel bag",
)

FIRST_NAMES: tuple[str, ...] = (
    "Maya", "Omar", "Priya", "Lukas", "Chloe", "Tomas", "Aisha", "Daniel", "Mei", "Jonas",
    "Fatima", "Ethan", "Sofia", "Kwame", "Hannah", "Diego", "Ingrid", "Rahul", "Grace",
    "Mateo", "Leila", "Sean", "Yuki", "Amara", "Pavel", "Nora", "Hiroshi", "Elena", "Marcus",
    "Zara", "Felix", "Ana", "Tariq", "Olivia", "Bjorn", "Camila", "Dev", "Rosa", "Samuel",
    "Ines", "Kofi", "Lena", "Arjun", "Megan", "Viktor", "Noor", "Callum", "Beatriz", "Jun",
    "Esther", "Ibrahim", "Claire", "Mohammed", "Tessa", "Andre", "Freya", "Ravi", "Julia",
    "Nikhil", "Paula",
)

LAST_NAMES: tuple[str, ...] = (
    "Okafor", "Lindqvist", "Patel", "Moreau", "Nakamura", "Garcia", "Brennan", "Kowalski",
    "Haddad", "Chen", "Schmidt", "Osei", "Rossi", "Murphy", "Silva", "Novak", "Kim",
    "Fischer", "Mensah", "Dubois", "Ivanova", "Reyes", "Walsh", "Tanaka", "Kaur", "Larsen",
    "Abara", "Costa", "Hughes", "Yilmaz", "Park", "Bauer", "Nguyen", "Oliveira", "Khan",
    "Jensen", "Santos", "Quinn", "Mbeki", "Fernandez", "Sato", "Popescu", "Ahmed", "Byrne",
    "Lopez", "Weber", "Adeyemi", "Horvat", "Singh", "Marsh", "Duarte", "Eriksen", "Hall",
    "Varga", "Boateng", "Moretti", "Cohen", "Farouk", "Sharma", "Wood",
)

EMAIL_DOMAINS: tuple[str, ...] = (
    "gmail.com", "outlook.com", "yahoo.com", "hotmail.com", "icloud.com", "proton.me",
    "fastmail.com", "aol.com", "mail.com", "gmx.net", "comcast.net", "btinternet.com",
    "web.de", "live.co.uk", "yahoo.co.uk", "hey.com", "pm.me", "zoho.com",
    "brightlane.co", "millbrookdesign.com", "harborclinic.org", "tealmail.net",
)

STREETS: tuple[str, ...] = (
    "Larch Street", "Fairview Avenue", "Sparrow Place", "Harbor Road", "Willow Lane",
    "Kingsley Drive", "Maple Court", "Orchard Way", "Elm Terrace", "Granite Boulevard",
    "Birch Hollow", "Cedar Crest Road", "Mill Pond Lane", "Juniper Street",
)

CITIES: tuple[str, ...] = (
    "Portland, OR 97205", "Madison, WI 53703", "Burlington, VT 05401", "Austin, TX 78704",
    "Denver, CO 80203", "Raleigh, NC 27601", "Boise, ID 83702", "Tucson, AZ 85701",
    "Columbus, OH 43215", "Albany, NY 12207", "Savannah, GA 31401", "Omaha, NE 68102",
)

OPENERS: tuple[str, ...] = (
    "Hi,", "Hi.", "Hello,", "Hello!", "Hey there.", "Hey,", "Good morning.",
    "Good afternoon!", "Good evening,", "Hi Northwind!", "Hi Northwind Goods team,",
    "Hello, hoping you can help.", "Hi there, quick one.", "Dear Northwind Goods,",
    "Hi support,", "Hiya.", "Hello team.",
)

NAMED_OPENERS: tuple[str, ...] = (
    "Hi, this is {first}.", "{full} here.", "Hello, my name is {full}.", "Hi, it's {first}.",
    "Hey, {first} here.", "Good morning, this is {full}.",
)

ORDER_LEADS: tuple[str, ...] = (
    "Re: order {order}.", "About order {order}:", "Order {order} -", "Re: #{order}.",
    "Question about order number {order}.",
)

ORDER_SENTENCES: tuple[str, ...] = (
    "My order number is {order}.", "Order number: {order}", "It's order {order}.",
    "The order is #{order}.", "Order #{order}.", "This is for {order}.",
    "Order {order} if that helps.", "(order {order})", "Ref: {order}",
    "The order number is {order}.", "It was order {order}.", "Order no. {order}",
)

EMAIL_SENTENCES: tuple[str, ...] = (
    "My email is {email}.", "You can reach me at {email}.", "The order is under {email}.",
    "Please reply to {email}.", "I ordered with {email}.",
    "Contact me at {email} if you need anything.", "Email on my account: {email}",
    "It's under the email {email}.", "Best to email me at {email}.",
)

ACCOUNT_EMAIL_SENTENCES: tuple[str, ...] = (
    "The account is {email}.", "My login is {email}.", "Account email: {email}",
    "I signed up with {email}.", "It's registered to {email}.",
    "The email on the account is {email}.", "I log in with {email}.",
)

CLOSINGS: tuple[str, ...] = (
    "Thanks!", "Thank you.", "Thanks in advance.", "Appreciate the help.", "Cheers.",
    "Please let me know.", "Any help appreciated.", "Thx", "Let me know what you need from me.",
    "Hope you can sort this out.", "Looking forward to hearing back.", "Thank you so much!",
    "Please help.", "Thanks for your time.",
)

NAMED_CLOSINGS: tuple[str, ...] = (
    "Thanks, {first}", "- {first}", "Regards, {full}", "Best, {first} {initial}.",
    "Cheers, {first}", "Thank you, {full}",
)

EMAIL_CLOSINGS: tuple[str, ...] = ("Thanks, {first} ({email})", "{full} / {email}")


@dataclass(frozen=True)
class IntentSpec:
    """Message parts for one intent and how often each field is present."""

    product_bodies: tuple[str, ...]  # each contains {product}; some also {order}
    plain_bodies: tuple[str, ...]  # no product; some contain {order}
    details: tuple[str, ...]  # optional context sentences, no field values
    p_order: float
    p_product: float
    p_email: float
    email_sentences: tuple[str, ...] = EMAIL_SENTENCES


SPECS: dict[str, IntentSpec] = {
    "track_order": IntentSpec(
        product_bodies=(
            "Where is my {product}? I ordered it over a week ago and it still hasn't shown up.",
            "Can you tell me when the {product} will arrive?",
            "Any update on the {product} I ordered? Tracking hasn't moved in days.",
            "I'm still waiting on my {product}. Has it actually shipped yet?",
            "My {product} was supposed to be here by Friday and there's no sign of it.",
            "Could you check the delivery status of the {product} on order {order}?",
            "Order {order} with the {product} says shipped but the tracking link doesn't work. Where is it?",
            "Just wondering where my {product} is, the tracking page only says label created.",
            "How much longer for the {product}? It's been stuck in transit since Monday.",
            "The {product} still hasn't arrived. Is it lost?",
            "Do you have an estimated delivery date for the {product}?",
            "I need the {product} by the weekend, is it going to make it?",
            "When is my {product} from {order} going to be delivered?",
        ),
        plain_bodies=(
            "Where is my package? It's been ten days since I ordered.",
            "Can you check on order {order}? It still hasn't arrived.",
            "Tracking for {order} hasn't updated since last Tuesday.",
            "My order hasn't shown up yet and I'm starting to worry.",
            "Has my order shipped yet? I never got a shipping email.",
            "What's the status of my order? The estimated delivery date has come and gone.",
            "Could you give me an update on {order}? It has said out for delivery for three days.",
            "Is there a way to see where my parcel is? The tracking link just gives an error.",
            "When will order {order} be delivered?",
        ),
        details=(
            "I paid for express shipping.",
            "It was meant to be a birthday present.",
            "I've asked my neighbours and nobody has it.",
            "The courier website just says 'exception'.",
            "I'm away next week so I'd like to know when to expect it.",
            "I usually get your orders in three or four days.",
            "Nothing in my mailbox or at the front desk.",
        ),
        p_order=0.68, p_product=0.72, p_email=0.22,
    ),
    "cancel_order": IntentSpec(
        product_bodies=(
            "I'd like to cancel the {product}, I ordered it by mistake.",
            "Please cancel my order for the {product}. I found it cheaper locally.",
            "Can I still cancel the {product}? I only ordered it an hour ago.",
            "I changed my mind about the {product}, can you cancel it before it ships?",
            "Cancel the {product} on order {order} please, I don't need it anymore.",
            "I accidentally ordered the {product} twice, can you cancel one of them?",
            "Is it too late to cancel the {product}? The site won't let me do it myself.",
            "Please stop order {order} for the {product}, I picked the wrong one.",
            "I no longer want the {product}. Please cancel it.",
            "Hoping to cancel the {product} before it goes out.",
            "Need to cancel the {product}, it won't arrive in time for the event.",
        ),
        plain_bodies=(
            "I need to cancel my order, I placed it by mistake.",
            "Please cancel order {order}.",
            "Can you cancel {order} for me? I don't want it anymore.",
            "Is it still possible to cancel my order from this morning?",
            "I'd like to cancel my whole order please.",
            "How do I cancel an order? There's no button for it in my account.",
            "I changed my mind, please cancel order number {order} before it ships.",
            "Cancel my most recent order please, I don't need it after all.",
        ),
        details=(
            "It hasn't shipped yet as far as I can tell.",
            "I found the same thing cheaper elsewhere.",
            "My partner already bought one.",
            "I placed it late at night and wasn't thinking.",
            "Sorry for the hassle.",
            "I don't want to wait three weeks for it.",
        ),
        p_order=0.68, p_product=0.72, p_email=0.22,
    ),
    "return_item": IntentSpec(
        product_bodies=(
            "I'd like to return the {product}, it's not what I expected.",
            "How do I send back the {product}? It's smaller than it looked online.",
            "Can I return the {product}? I've only used it once.",
            "I want to return my {product} for a refund.",
            "The {product} isn't right for me, can I get a return label?",
            "Is it possible to return the {product} after 30 days?",
            "I'd like to send the {product} back. It's still in the box.",
            "Could you start a return for the {product} from order {order}?",
            "I'm returning the {product}, what's the process?",
            "The colour of the {product} is nothing like the photos, I'd like to return it.",
            "Can I return the {product}? It was a gift and they already have one.",
            "I want to return the {product} I got in order {order}.",
        ),
        plain_bodies=(
            "I'd like to return something from order {order}.",
            "How do I return an item? I can't find the form on your site.",
            "Can I get a return label for my last order?",
            "I want to send back everything from {order}, none of it worked out.",
            "What's your return policy? I'd like to send my purchase back.",
            "I need to return an item I bought last month.",
            "Please start a return for order {order}.",
            "Is there a fee for returns? I want to send back what I ordered.",
        ),
        details=(
            "It's unused and in the original packaging.",
            "I still have the receipt email.",
            "I've never returned anything before so I'm not sure how this works.",
            "It arrived about two weeks ago.",
            "It just isn't my style.",
            "I can drop it off at a post office if that's easier.",
        ),
        p_order=0.68, p_product=0.72, p_email=0.22,
    ),
    "refund_status": IntentSpec(
        product_bodies=(
            "I sent the {product} back two weeks ago and still haven't seen my refund.",
            "When will I get my money back for the {product}?",
            "You received my returned {product} last week, where's the refund?",
            "What's the status of my refund for the {product}?",
            "My refund for the {product} on order {order} still hasn't come through.",
            "Tracking shows you got the {product} back on Monday. How long until the refund hits my card?",
            "I was told the refund for the {product} was processed, but my bank shows nothing.",
            "Still waiting on the refund for the {product} I cancelled.",
            "Has the refund for the {product} been issued yet?",
            "It's been 10 business days since you confirmed the return of the {product}. Where is my refund?",
            "Can you check if the refund for the {product} from {order} went out?",
        ),
        plain_bodies=(
            "Where is my refund? I returned my order weeks ago.",
            "Can you check the status of the refund on {order}?",
            "I haven't received my refund yet for order {order}.",
            "How long do refunds usually take? Mine is still pending.",
            "My return was delivered to you ages ago but no refund so far.",
            "I got an email saying my refund was approved, but nothing has arrived in my account.",
            "Any news on my refund? It's been almost a month.",
            "Could you confirm my refund for {order} went through?",
        ),
        details=(
            "I paid with a credit card.",
            "I have the return tracking number if you need it.",
            "The confirmation email said 5-7 business days.",
            "I used PayPal for the original payment.",
            "It's been over three weeks now.",
            "I checked my bank statement twice.",
        ),
        p_order=0.68, p_product=0.72, p_email=0.22,
    ),
    "change_address": IntentSpec(
        product_bodies=(
            "I need to change the shipping address for my {product}.",
            "Can I update where the {product} is being delivered?",
            "I moved last week, can you send the {product} to my new place?",
            "There's a typo in the delivery address for the {product}, the zip code is wrong.",
            "Please redirect the {product} to my work address instead.",
            "Could the {product} on order {order} go to a different address?",
            "I put my old address on the order for the {product} by mistake.",
            "Can you ship the {product} to my parents' house instead? I'll be staying there.",
            "Is it too late to change the address for the {product}?",
            "The apartment number is missing on the {product} delivery, can you add it?",
            "Please change the delivery address on {order}, it's the one with the {product}.",
        ),
        plain_bodies=(
            "I need to update the shipping address on order {order}.",
            "Can I change my delivery address? I entered the wrong one.",
            "Please change the address on my order, I've moved.",
            "I made a mistake in my address when checking out, can you fix it?",
            "Is there a way to change where order {order} is shipped?",
            "My order is going to my old address, can you change it?",
            "Could you send order {order} to a different address please?",
            "The street name on my order is misspelled, can you correct it?",
        ),
        details=(
            "The correct address is {address}.",
            "New address: {address}",
            "It should go to {address}.",
            "It hasn't shipped yet as far as I can tell.",
            "Sorry, I was rushing at checkout.",
            "I'm happy to pay extra if needed.",
        ),
        p_order=0.68, p_product=0.72, p_email=0.22,
    ),
    "damaged_item": IntentSpec(
        product_bodies=(
            "My {product} arrived broken.",
            "The {product} came with a big crack down the side.",
            "I just opened the box and the {product} is dented.",
            "The {product} was damaged in shipping, the box was crushed.",
            "The {product} arrived scratched and chipped, not usable like this.",
            "Unfortunately the {product} showed up in pieces.",
            "The {product} from order {order} arrived damaged.",
            "The {product} doesn't work, it looks like it was dropped in transit.",
            "The {product} came with a chunk missing from the edge.",
            "The {product} I received is scratched all over.",
            "The box was soaked and the {product} inside is ruined.",
            "Order {order} arrived today and the {product} is cracked.",
        ),
        plain_bodies=(
            "My package arrived damaged and the item inside is broken.",
            "Everything in order {order} arrived smashed.",
            "The box was crushed and what was inside is cracked.",
            "My delivery came damaged, what can I do?",
            "The item in {order} arrived with a big dent.",
            "Something in my order broke during shipping.",
            "The parcel was torn open and the contents were scratched.",
            "What I ordered arrived in pieces.",
        ),
        details=(
            "I can send photos.",
            "Photo attached.",
            "The packaging looked fine from the outside.",
            "I'd like a replacement if possible.",
            "It was meant to be a gift, so this is really disappointing.",
            "I haven't used it at all.",
        ),
        p_order=0.68, p_product=0.72, p_email=0.22,
    ),
    "missing_item": IntentSpec(
        product_bodies=(
            "My package arrived but the {product} wasn't in it.",
            "The {product} is missing from my order.",
            "I got the box today but there was no {product} inside.",
            "The packing slip lists the {product} but it wasn't in the box.",
            "Everything arrived except the {product}.",
            "Order {order} came without the {product}.",
            "I only received half of my order, the {product} is missing.",
            "The {product} wasn't included in my delivery.",
            "Where is the {product}? It says delivered but it wasn't in the parcel with the rest.",
            "The box was sealed but the {product} just isn't there.",
            "The {product} from order {order} never made it into the box.",
        ),
        plain_bodies=(
            "One of the items from order {order} wasn't in the box.",
            "My delivery was missing an item.",
            "I received my package but something is missing.",
            "The parcel for {order} arrived almost empty.",
            "Part of my order didn't come.",
            "The packing slip shows two items but there was only one in the box.",
            "An item is missing from my order.",
            "My order arrived incomplete.",
        ),
        details=(
            "I checked all the packaging twice.",
            "The box looked like it had been opened.",
            "Could you send it separately?",
            "Nothing else was in the bag.",
            "I need it by next week.",
            "I've double-checked with everyone in the house.",
        ),
        p_order=0.68, p_product=0.72, p_email=0.22,
    ),
    "billing_issue": IntentSpec(
        product_bodies=(
            "I was charged twice for the {product}.",
            "The price I paid for the {product} is higher than what was shown at checkout.",
            "My card was charged for the {product} but the order never went through.",
            "The discount code didn't apply to the {product}.",
            "I see two payments for the {product} on my statement.",
            "Why was I charged shipping on the {product}? It said free shipping.",
            "There's a charge for the {product} on order {order} that I don't recognise.",
            "The {product} was on sale but I was billed full price.",
            "I was charged {price} for the {product} instead of {price2}.",
            "My payment for the {product} failed but the money still left my account.",
            "Order {order} charged me {price} for the {product}, the listed price was {price2}.",
        ),
        plain_bodies=(
            "I was charged twice for order {order}.",
            "There's a charge on my card from Northwind Goods I don't recognise.",
            "My promo code wasn't applied at checkout.",
            "I was billed {price} but my order total said {price2}.",
            "Why is there a second charge for order {order}?",
            "The payment failed but I still see the money taken from my account.",
            "I was charged for express shipping but chose standard.",
            "Can you check the charges on {order}? Something doesn't add up.",
        ),
        details=(
            "I paid with my debit card.",
            "I have a screenshot of the checkout page.",
            "The charges are both dated the same day.",
            "Please fix this as soon as possible.",
            "My bank says it's not pending, it's gone through.",
        ),
        p_order=0.68, p_product=0.72, p_email=0.22,
    ),
    "account_access": IntentSpec(
        product_bodies=(
            "I can't log in to check on my {product} order.",
            "I'm locked out of my account and can't track the {product}.",
            "I wanted to reorder the {product} but my password isn't working.",
            "I can't sign in to leave a review for the {product}.",
            "The reset link never arrives, and I need to see the delivery date for the {product}.",
            "Every time I try to log in to check order {order} for the {product}, it says my password is wrong.",
            "My account got locked while I was trying to buy the {product}.",
            "I can't get into my account to see the {product} in my saved list.",
        ),
        plain_bodies=(
            "I forgot my password and can't log in.",
            "The password reset email never arrives.",
            "My account is locked after too many attempts.",
            "I can't sign in to my account, it says the email isn't registered.",
            "The reset link says it has expired every time I click it.",
            "I'm trying to log in to check {order} but I can't get into my account.",
            "How do I reset my password? I don't see an option in the app.",
            "I keep getting an error when I try to log in.",
            "Two-step verification codes aren't reaching my phone, so I can't log in.",
        ),
        details=(
            "I've checked my spam folder.",
            "I'm on my phone if that matters.",
            "I tried three times already.",
            "I've been a customer for years.",
            "I tried a different browser too.",
        ),
        p_order=0.25, p_product=0.20, p_email=0.70,
        email_sentences=ACCOUNT_EMAIL_SENTENCES,
    ),
    "product_question": IntentSpec(
        product_bodies=(
            "Does the {product} come with a warranty?",
            "What are the dimensions of the {product}?",
            "Is the {product} going to be back in stock soon?",
            "What is the {product} made of?",
            "Does the {product} come in other colours?",
            "Can I get the {product} gift wrapped?",
            "How do I clean the {product}?",
            "Is the {product} still on sale?",
            "Do you ship the {product} to Canada?",
            "How heavy is the {product}?",
            "I ordered the {product} ({order}), does it need any assembly?",
            "Before my {product} on order {order} arrives, can you tell me if it comes with instructions?",
            "I'm thinking of buying the {product}. Is it a good fit for a small apartment?",
        ),
        plain_bodies=(
            "Do your products come with a warranty?",
            "Will anything in order {order} need assembly?",
            "Does the item I ordered in {order} come with a user manual?",
            "Are the items on your site in stock, or made to order?",
            "I saw something in your newsletter but can't find it on the site. Was it discontinued?",
            "Do you restock sold-out items?",
            "Is the item in order {order} covered by a warranty?",
            "Do you offer gift wrapping?",
        ),
        details=(
            "I'm buying it as a gift.",
            "I couldn't find the answer on the product page.",
            "I want to make sure before I order.",
            "I'd like to order it this week.",
        ),
        p_order=0.20, p_product=0.90, p_email=0.20,
    ),
}

_WORD = re.compile(r"^([^A-Za-z']*)([A-Za-z]+)([^A-Za-z']*)$")
_SLANG: dict[str, str] = {"you": "u", "please": "pls", "thanks": "thx", "your": "ur"}


@dataclass(frozen=True)
class Person:
    first: str
    last: str

    @property
    def full(self) -> str:
        return f"{self.first} {self.last}"


def make_email(rng: random.Random, person: Person) -> str:
    """An address built from a name, a pattern and a domain (always lower case)."""
    f, l = person.first.lower(), person.last.lower()
    local = rng.choice(
        (
            f"{f}.{l}", f"{f}{l}", f"{f[0]}.{l}", f"{f}_{l}", f"{l}.{f}", f"{f}{rng.randint(1, 99)}",
            f"{f}.{l}{rng.randint(70, 99)}", f"{f[0]}{l}", f"{f}.{l[0]}", f"{l}{f[0]}{rng.randint(1, 9)}",
        )
    )
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


def make_price(rng: random.Random) -> tuple[str, str]:
    """A charged price and a lower listed price, e.g. ('$64.99', '$49.99')."""
    listed = rng.randint(12, 180)
    charged = listed + rng.randint(5, 40)
    cents = rng.choice(("99", "00", "50", "95"))
    return f"${charged}.{cents}", f"${listed}.{cents}"


def add_typos(rng: random.Random, template: str) -> str:
    """Introduce one or two typos or texting shortcuts, never inside a {slot}."""
    tokens = template.split(" ")
    candidates = [
        i for i, tok in enumerate(tokens)
        if "{" not in tok and (m := _WORD.match(tok)) and len(m.group(2)) >= 4
        and m.group(2) not in ("Northwind", "Goods")
    ]
    rng.shuffle(candidates)
    for i in candidates[: rng.choice((1, 1, 2))]:
        pre, word, post = _WORD.match(tokens[i]).groups()  # type: ignore[union-attr]
        if word.lower() in _SLANG and rng.random() < 0.5:
            word = _SLANG[word.lower()]
        else:
            k = rng.randrange(1, len(word) - 1)
            op = rng.choice(("swap", "drop", "double"))
            if op == "swap":
                word = word[:k] + word[k + 1] + word[k] + word[k + 2:]
            elif op == "drop":
                word = word[:k] + word[k + 1:]
            else:
                word = word[:k] + word[k] + word[k:]
        tokens[i] = pre + word + post
    return " ".join(tokens)


def product_surface(rng: random.Random, product: str, lowercase_style: bool) -> str:
    """How the customer writes the product: usually as listed, sometimes capitalised."""
    if lowercase_style:
        return product.lower()
    r = rng.random()
    if r < 0.10:
        return " ".join(w if w == "of" else w[:1].upper() + w[1:] for w in product.split(" "))
    if r < 0.16:
        return product.lower()
    return product


def compose(
    rng: random.Random, spec: IntentSpec, has_order: bool, has_product: bool, has_email: bool
) -> str:
    """Build a message skeleton: the message with {slots} where values go."""
    pool = spec.product_bodies if has_product else spec.plain_bodies
    inline_options = [b for b in pool if "{order}" in b]
    inline_order = has_order and bool(inline_options) and rng.random() < 0.45
    body = rng.choice(inline_options if inline_order else [b for b in pool if "{order}" not in b])

    length = rng.choices(("short", "medium", "long"), weights=(0.25, 0.45, 0.30))[0]
    use_name = rng.random() < 0.35
    p_opener = {"short": 0.25, "medium": 0.6, "long": 0.8}[length]
    n_details = {"short": 0, "medium": rng.choice((0, 1)), "long": rng.choice((1, 1, 2))}[length]
    p_closing = {"short": 0.2, "medium": 0.55, "long": 0.8}[length]

    lead: list[str] = []
    name_done = False  # the name is given in the opener
    if rng.random() < p_opener:
        name_done = use_name and rng.random() < 0.5
        lead.append(rng.choice(NAMED_OPENERS if name_done else OPENERS))

    middle: list[str] = [body]
    details = rng.sample(spec.details, n_details)
    if sum("{address}" in d for d in details) > 1:  # give the new address only once
        details = details[:1]
    middle.extend(details)

    email_in_closing = False
    closing: list[str] = []
    if use_name and not name_done:
        if has_email and rng.random() < 0.35:
            closing.append(rng.choice(EMAIL_CLOSINGS))
            email_in_closing = True
        else:
            closing.append(rng.choice(NAMED_CLOSINGS))
    elif rng.random() < p_closing:
        closing.append(rng.choice(CLOSINGS))

    if has_order and not inline_order:
        where = rng.random()
        if where < 0.25:
            lead.append(rng.choice(ORDER_LEADS))
        else:
            pos = rng.randint(0 if where < 0.4 else 1, len(middle))
            middle.insert(pos, rng.choice(ORDER_SENTENCES))
    if has_email and not email_in_closing:
        pos = rng.randint(1, len(middle))
        middle.insert(pos, rng.choice(spec.email_sentences))

    parts = lead + middle + closing
    for i in range(1, len(parts)):  # "Hello, can I ..." rather than "Hello, Can I ..."
        if parts[i - 1].endswith((",", "-")) and re.match(r"[A-Z][a-z]", parts[i]):
            parts[i] = parts[i][0].lower() + parts[i][1:]
    return " ".join(parts)


def fill(
    rng: random.Random, skeleton: str, product: str | None, order: str | None,
    person: Person, email: str | None,
) -> str:
    """Apply style (typos, lower case) to the skeleton, then put the slot values in."""
    lowercase_style = rng.random() < 0.07
    text = skeleton
    if rng.random() < 0.15:
        text = add_typos(rng, text)
    if lowercase_style:
        text = text.lower()
    charged, listed = make_price(rng)
    address = f"{rng.randint(12, 9899)} {rng.choice(STREETS)}, {rng.choice(CITIES)}"
    values = {
        "product": product_surface(rng, product, lowercase_style) if product else "",
        "order": order or "",
        "email": email or "",
        "first": person.first,
        "full": person.full,
        "initial": person.last[0],
        "price": charged,
        "price2": listed,
        "address": address,
    }
    return text.format(**values)


def check_row(text: str, fields: dict[str, str | None]) -> None:
    """Every non-null value is in the text; null fields are genuinely absent."""
    lower = text.lower()
    assert len(text) <= MAX_CHARS, text
    if fields["order_id"] is None:
        assert not re.search(r"NW-?\d", text, re.IGNORECASE), text
    else:
        assert re.fullmatch(r"NW-\d{6}", fields["order_id"]) and fields["order_id"] in text
    if fields["email"] is None:
        assert "@" not in text, text
    else:
        assert fields["email"] in text
    chosen = fields["product"]
    if chosen is not None:
        assert chosen == chosen.lower() and chosen in lower, text
    for other in PRODUCTS:
        o = other.lower()
        if o in lower:
            assert chosen is not None and o in chosen, (o, text)


def quota(rng: random.Random, n: int, p: float) -> list[bool]:
    """Exactly round(n * p) True values in random order."""
    k = round(n * p)
    flags = [True] * k + [False] * (n - k)
    rng.shuffle(flags)
    return flags


def generate() -> dict[str, list[dict[str, object]]]:
    """All splits; rows are unique by text and by skeleton across the whole dataset."""
    rng = random.Random(SEED)
    seen_text: set[str] = set()
    seen_skeleton: set[str] = set()
    used_orders: set[str] = set()
    splits: dict[str, list[dict[str, object]]] = {}

    for split, size in SPLITS:
        assert size % len(INTENTS) == 0
        per_intent = size // len(INTENTS)
        rows: list[dict[str, object]] = []
        for intent in INTENTS:
            spec = SPECS[intent]
            orders = quota(rng, per_intent, spec.p_order)
            products = quota(rng, per_intent, spec.p_product)
            emails = quota(rng, per_intent, spec.p_email)
            for has_order, has_product, has_email in zip(orders, products, emails):
                for _ in range(MAX_TRIES):
                    skeleton = compose(rng, spec, has_order, has_product, has_email)
                    if skeleton in seen_skeleton:
                        continue
                    person = Person(rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))
                    email_person = person if rng.random() < 0.7 else Person(
                        rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES))
                    product = rng.choice(PRODUCTS) if has_product else None
                    order = None
                    if has_order:
                        while (order := f"NW-{rng.randint(100000, 999999)}") in used_orders:
                            pass
                    email = make_email(rng, email_person) if has_email else None
                    text = fill(rng, skeleton, product, order, person, email)
                    if len(text) > MAX_CHARS or text in seen_text:
                        continue
                    fields: dict[str, str | None] = {
                        "intent": intent,
                        "order_id": order,
                        "product": product.lower() if product else None,
                        "email": email,
                    }
                    check_row(text, fields)
                    seen_skeleton.add(skeleton)
                    seen_text.add(text)
                    if order:
                        used_orders.add(order)
                    rows.append({"text": text, "fields": fields})
                    break
                else:
                    raise RuntimeError(f"could not compose a unique {intent} message")
        rng.shuffle(rows)
        splits[split] = rows

    train_texts = {r["text"] for r in splits["train"]}
    for held_out in ("validation", "test"):
        assert not train_texts & {r["text"] for r in splits[held_out]}, held_out
    return splits


def main() -> None:
    splits = generate()
    for split, rows in splits.items():
        path = OUT_DIR / f"{split}.jsonl"
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        print(f"wrote {len(rows):4d} rows to {path}")


if __name__ == "__main__":
    main()
