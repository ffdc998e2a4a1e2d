"""Word lists for NIAH keys (RULER's ``words`` keys are ``adjective-noun`` pairs).

RULER draws keys such as ``"abhorrent-guava"`` from the ``wonderwords`` package; that package
is not a dependency here, so these two lists (plain, common English words chosen for this
project) play its part: 202 x 195 = 39,390 distinct keys, enough to fill a 64K-token
MK-NIAH-2 haystack of distractor needles with unique keys.
"""

from __future__ import annotations

ADJECTIVES: tuple[str, ...] = tuple(
    """
    able absent abundant acid active actual adept agile alert alive amber ample ancient angry
    annual anxious arctic ardent arid awake bald bare basic bitter blank bland bleak blind blunt
    bold bouncy brave brief bright brisk broad broken bumpy busy calm candid careful casual cheap
    cheerful chilly civil clean clever cloudy clumsy coarse cold common cosmic cozy crafty crisp
    cruel curly curved damp dapper daring dark dazzling deep dense dusty eager early earnest
    elastic elder empty endless equal exact faint fair famous fancy fast fearless fertile fierce
    flat fluffy fond formal fragile frank free fresh frosty frugal funny fuzzy gentle giant glad
    gloomy golden graceful grand grateful greasy great green grim gritty happy hardy harsh hasty
    heavy hidden hollow honest humble hungry icy idle jolly keen kind lame large lazy lively
    lonely loud loyal lucky magic mellow merry mighty mild misty modern modest moist muddy narrow
    neat nervous nimble noble noisy odd orange pale patient plain polite proud quick quiet rapid
    rare rough royal rusty sandy scarlet shiny silent silver simple sleepy slim smooth solid
    sour spare spicy steady sticky stormy strict sturdy subtle sunny swift tame tender tidy tiny
    tough vast velvet vivid warm wary wild windy wise witty woolen young zealous
    """.split()
)

NOUNS: tuple[str, ...] = tuple(
    """
    acorn adder anchor anvil apple apricot arch arrow aspen atlas badger bagel ballad bamboo
    banjo barley barrel basket beacon beaver beetle bell bench birch biscuit bison blossom bonnet
    bottle boulder bramble bridge brook bucket buffalo bugle cabin cactus camel candle canoe
    canyon carrot castle cedar cello chalk cherry chestnut chimney cider cinnamon citrus clover
    cobra comet compass copper coral cotton cougar coyote crane crater cricket crow cypress daisy
    delta desert dingo dolphin donkey dragon drum eagle easel elbow elm ember emerald falcon
    fern ferret fiddle fig finch fjord flute fossil fountain fox gable galaxy garnet gazelle
    geyser ginger glacier goblet goose granite grape guava gull hammer harbor harp hazel hedge
    heron hickory honey hornet iris island ivory jackal jasmine jigsaw juniper kayak kettle kiwi
    ladder lagoon lantern larch lemon lentil leopard lily lizard llama locket lotus lynx magnet
    mango maple marble meadow melon mitten mole moose mosaic moth mustard nectar nutmeg oak oasis
    olive onion orchid otter owl oyster paddle panther papaya parrot peach pebble pelican pepper
    pigeon pillow pine plum pony poppy prairie puffin pumpkin quail quartz quill rabbit radish
    raven reef ribbon river robin saddle salmon sparrow spruce squid thimble tulip walnut willow
    """.split()
)

if len(set(ADJECTIVES)) != len(ADJECTIVES) or len(set(NOUNS)) != len(NOUNS):  # pragma: no cover
    raise RuntimeError("word lists must not repeat a word")
