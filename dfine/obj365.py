"""The 365 Objects365 (v2) class names, in category-id order.

``OBJ365_CLASSES[i]`` is the category with Objects365 id ``i + 1``. The official D-FINE
Objects365 checkpoints (``dfine_*_obj365`` in :mod:`dfine.zoo`) are trained on the raw
category ids without remapping, so their classification heads have **366** outputs: logit
``k`` (1..365) is ``OBJ365_CLASSES[k - 1]`` and logit 0 is an id that no annotation uses.
:data:`OBJ365_LABEL_NAMES` is that 366-long, index-by-logit view.

Source: the reference implementation (github.com/Peterande/D-FINE, commit 4a1f73a,
``src/solver/_solver.py``) keeps two commented-out lists in the same order: the raw dataset
spellings (with the dataset's typos, e.g. ``"Moniter/TV"``, ``"Bakset"``) and an indexed,
cleaned copy (``"Monitor/TV"``, ``"Basket"``). These are the cleaned names; the order, and
so the ids, are the same.
"""

from __future__ import annotations

__all__ = ["OBJ365_CLASSES", "OBJ365_LABEL_NAMES", "OBJ365_UNUSED_LABEL"]

OBJ365_CLASSES: tuple[str, ...] = (
    "Person", "Sneakers", "Chair", "Other Shoes", "Hat", "Car", "Lamp", "Glasses", "Bottle",
    "Desk", "Cup", "Street Lights", "Cabinet/shelf", "Handbag/Satchel", "Bracelet", "Plate",
    "Picture/Frame", "Helmet", "Book", "Gloves", "Storage box", "Boat", "Leather Shoes",
    "Flower", "Bench", "Potted Plant", "Bowl/Basin", "Flag", "Pillow", "Boots", "Vase",
    "Microphone", "Necklace", "Ring", "SUV", "Wine Glass", "Belt", "Monitor/TV", "Backpack",
    "Umbrella", "Traffic Light", "Speaker", "Watch", "Tie", "Trash bin Can", "Slippers",
    "Bicycle", "Stool", "Barrel/bucket", "Van", "Couch", "Sandals", "Basket", "Drum",
    "Pen/Pencil", "Bus", "Wild Bird", "High Heels", "Motorcycle", "Guitar", "Carpet",
    "Cell Phone", "Bread", "Camera", "Canned", "Truck", "Traffic cone", "Cymbal", "Lifesaver",
    "Towel", "Stuffed Toy", "Candle", "Sailboat", "Laptop", "Awning", "Bed", "Faucet", "Tent",
    "Horse", "Mirror", "Power outlet", "Sink", "Apple", "Air Conditioner", "Knife",
    "Hockey Stick", "Paddle", "Pickup Truck", "Fork", "Traffic Sign", "Balloon", "Tripod",
    "Dog", "Spoon", "Clock", "Pot", "Cow", "Cake", "Dining Table", "Sheep", "Hanger",
    "Blackboard/Whiteboard", "Napkin", "Other Fish", "Orange/Tangerine", "Toiletry", "Keyboard",
    "Tomato", "Lantern", "Machinery Vehicle", "Fan", "Green Vegetables", "Banana",
    "Baseball Glove", "Airplane", "Mouse", "Train", "Pumpkin", "Soccer", "Skiboard", "Luggage",
    "Nightstand", "Tea pot", "Telephone", "Trolley", "Head Phone", "Sports Car", "Stop Sign",
    "Dessert", "Scooter", "Stroller", "Crane", "Remote", "Refrigerator", "Oven", "Lemon",
    "Duck", "Baseball Bat", "Surveillance Camera", "Cat", "Jug", "Broccoli", "Piano", "Pizza",
    "Elephant", "Skateboard", "Surfboard", "Gun", "Skating and Skiing Shoes", "Gas Stove",
    "Donut", "Bow Tie", "Carrot", "Toilet", "Kite", "Strawberry", "Other Balls", "Shovel",
    "Pepper", "Computer Box", "Toilet Paper", "Cleaning Products", "Chopsticks", "Microwave",
    "Pigeon", "Baseball", "Cutting/chopping Board", "Coffee Table", "Side Table", "Scissors",
    "Marker", "Pie", "Ladder", "Snowboard", "Cookies", "Radiator", "Fire Hydrant", "Basketball",
    "Zebra", "Grape", "Giraffe", "Potato", "Sausage", "Tricycle", "Violin", "Egg",
    "Fire Extinguisher", "Candy", "Fire Truck", "Billiards", "Converter", "Bathtub",
    "Wheelchair", "Golf Club", "Briefcase", "Cucumber", "Cigar/Cigarette", "Paint Brush",
    "Pear", "Heavy Truck", "Hamburger", "Extractor", "Extension Cord", "Tong", "Tennis Racket",
    "Folder", "American Football", "Earphone", "Mask", "Kettle", "Tennis", "Ship", "Swing",
    "Coffee Machine", "Slide", "Carriage", "Onion", "Green Beans", "Projector", "Frisbee",
    "Washing Machine/Drying Machine", "Chicken", "Printer", "Watermelon", "Saxophone", "Tissue",
    "Toothbrush", "Ice Cream", "Hot Air Balloon", "Cello", "French Fries", "Scale", "Trophy",
    "Cabbage", "Hot Dog", "Blender", "Peach", "Rice", "Wallet/Purse", "Volleyball", "Deer",
    "Goose", "Tape", "Tablet", "Cosmetics", "Trumpet", "Pineapple", "Golf Ball", "Ambulance",
    "Parking Meter", "Mango", "Key", "Hurdle", "Fishing Rod", "Medal", "Flute", "Brush",
    "Penguin", "Megaphone", "Corn", "Lettuce", "Garlic", "Swan", "Helicopter", "Green Onion",
    "Sandwich", "Nuts", "Speed Limit Sign", "Induction Cooker", "Broom", "Trombone", "Plum",
    "Rickshaw", "Goldfish", "Kiwi Fruit", "Router/Modem", "Poker Card", "Toaster", "Shrimp",
    "Sushi", "Cheese", "Notepaper", "Cherry", "Pliers", "CD", "Pasta", "Hammer", "Cue",
    "Avocado", "Hami Melon", "Flask", "Mushroom", "Screwdriver", "Soap", "Recorder", "Bear",
    "Eggplant", "Board Eraser", "Coconut", "Tape Measure/Ruler", "Pig", "Showerhead", "Globe",
    "Chips", "Steak", "Crosswalk Sign", "Stapler", "Camel", "Formula 1", "Pomegranate",
    "Dishwasher", "Crab", "Hoverboard", "Meatball", "Rice Cooker", "Tuba", "Calculator",
    "Papaya", "Antelope", "Parrot", "Seal", "Butterfly", "Dumbbell", "Donkey", "Lion", "Urinal",
    "Dolphin", "Electric Drill", "Hair Dryer", "Egg Tart", "Jellyfish", "Treadmill", "Lighter",
    "Grapefruit", "Game Board", "Mop", "Radish", "Baozi", "Target", "French", "Spring Rolls",
    "Monkey", "Rabbit", "Pencil Case", "Yak", "Red Cabbage", "Binoculars", "Asparagus",
    "Barbell", "Scallop", "Noodles", "Comb", "Dumpling", "Oyster", "Table Tennis Paddle",
    "Cosmetics Brush/Eyeliner Pencil", "Chainsaw", "Eraser", "Lobster", "Durian", "Okra",
    "Lipstick", "Cosmetics Mirror", "Curling", "Table Tennis",
)  # fmt: skip
"""Name of Objects365 category id ``i + 1``: index 0 ``'Person'`` .. 364 ``'Table Tennis'``."""

OBJ365_UNUSED_LABEL = "(unused)"
"""Name given to logit 0 of the 366-way Objects365 heads (no category has id 0)."""

OBJ365_LABEL_NAMES: tuple[str, ...] = (OBJ365_UNUSED_LABEL, *OBJ365_CLASSES)
"""Name of every logit of an official Objects365 head (366 entries, index = category id)."""
