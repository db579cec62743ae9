"""Caption text: clean English captions, the planted text defects (spam, non-English), and URLs.

A caption is built from a picture's facts (object word, colour, size, position, background), so a
near-miss defect is the same call with one fact swapped, and a flipped near duplicate gets a caption
that is still true.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU8])")  # "a orange" -> "an orange", "a 8" -> "an 8"

POSITIONS = (
    ("in the top left corner", "at the top", "in the top right corner"),
    ("on the left", "in the centre", "on the right"),
    ("in the bottom left corner", "at the bottom", "in the bottom right corner"),
)
MIRRORED = {p: row[2 - i] for row in POSITIONS for i, p in enumerate(row)}
BACKGROUND_WORDS = {
    "plain": "plain",
    "gradient": "shaded",
    "stripes": "striped",
    "checker": "checkered",
    "dots": "dotted",
    "noise": "grainy",
}
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def position_phrase(cx: float, cy: float) -> str:
    return POSITIONS[min(int(cy * 3), 2)][min(int(cx * 3), 2)]


def size_word(scale: float, low: float, high: float) -> str:
    third = (high - low) / 3
    return "small" if scale < low + third else "large" if scale >= high - third else "medium"


def fill(template: str, **facts: str) -> str:
    return fix_articles(template.format(**facts))


def fix_articles(text: str) -> str:
    return _ARTICLE.sub(r"\1n ", text)


def object_word(kind: str, shape: str | None, digit: int | None, digit_name: str) -> str:
    """The caption's noun for the object: a shape name, or e.g. "digit 7"."""
    return digit_name.format(d=digit) if kind == "digit" else str(shape)


# -- spam ----------------------------------------------------------------------------------------------

# fmt: off
_PRODUCTS = ("phone cases", "sneakers", "sunglasses", "watches", "handbags", "posters", "t-shirts", "mugs")
_SITES = ("best-deals-online", "cheapstuff24", "megastore-outlet", "topshop-discount", "buy-now-shop",
          "clickbargains")
_SEO = ("free", "download", "hd", "wallpaper", "best", "cheap", "sale", "2024", "online", "shop", "discount",
        "top", "new", "official", "deal", "buy")
# fmt: on
_SPAM = (
    "click here to buy cheap {product} - free shipping!!!",
    "www.{site}.com | best {product} deals, {seo}",
    "{seo} {seo} {seo} {seo} {seo}",
    "IMG_{n}.JPG",
    "DSC{n}",
    "Stock Photo - {thing} royalty free, {seo}",
    "Shop now: {thing} stickers | {site}.com",
    "{thing} wallpaper free download hd 1920x1080",
    "buy {thing} online at low prices | http://{site}.net",
    "Home | Products | Contact us | Login | {site}.com",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit",
    "Sponsored: {product} up to 70% off, order today",
)


def spam_caption(rng: np.random.Generator, thing: str) -> str:
    """Boilerplate or SEO text; some templates mention the pictured ``thing`` so it looks half-relevant."""
    template = _pick(rng, _SPAM)
    for word in rng.choice(_SEO, size=template.count("{seo}"), replace=False):
        template = template.replace("{seo}", str(word), 1)
    return template.format(
        product=_pick(rng, _PRODUCTS),
        site=_pick(rng, _SITES),
        n=int(rng.integers(1000, 99999)),
        thing=thing,
    )


# -- non-English ---------------------------------------------------------------------------------------

# Noun phrases with the article each language's grammar needs in the templates below; a name missing
# here falls back to the English word inside a foreign sentence, which language id still calls foreign.
_NOUNS = {
    "de": {"circle": "einen Kreis", "ellipse": "eine Ellipse", "ring": "einen Ring", "square": "ein Quadrat",
           "rectangle": "ein Rechteck", "diamond": "eine Raute", "triangle": "ein Dreieck",
           "pentagon": "ein Fünfeck", "hexagon": "ein Sechseck", "octagon": "ein Achteck",
           "star": "einen Stern", "cross": "ein Kreuz", "heart": "ein Herz", "crescent": "einen Halbmond",
           "arrow": "einen Pfeil", "trapezoid": "ein Trapez", "digit": "die Ziffer {d}"},
    "fr": {"circle": "un cercle", "ellipse": "une ellipse", "ring": "un anneau", "square": "un carré",
           "rectangle": "un rectangle", "diamond": "un losange", "triangle": "un triangle",
           "pentagon": "un pentagone", "hexagon": "un hexagone", "octagon": "un octogone",
           "star": "une étoile", "cross": "une croix", "heart": "un cœur", "crescent": "un croissant",
           "arrow": "une flèche", "trapezoid": "un trapèze", "digit": "le chiffre {d}"},
    "es": {"circle": "un círculo", "ellipse": "una elipse", "ring": "un anillo", "square": "un cuadrado",
           "rectangle": "un rectángulo", "diamond": "un rombo", "triangle": "un triángulo",
           "pentagon": "un pentágono", "hexagon": "un hexágono", "octagon": "un octágono",
           "star": "una estrella", "cross": "una cruz", "heart": "un corazón", "crescent": "una media luna",
           "arrow": "una flecha", "trapezoid": "un trapecio", "digit": "el número {d}"},
}  # fmt: skip
_COLOURS = {
    "de": {"red": "Rot", "orange": "Orange", "yellow": "Gelb", "green": "Grün", "teal": "Türkis",
           "blue": "Blau", "purple": "Lila", "pink": "Rosa"},
    "fr": {"red": "rouge", "orange": "orange", "yellow": "jaune", "green": "verte", "teal": "turquoise",
           "blue": "bleue", "purple": "violette", "pink": "rose"},
    "es": {"red": "rojo", "orange": "naranja", "yellow": "amarillo", "green": "verde", "teal": "turquesa",
           "blue": "azul", "purple": "morado", "pink": "rosa"},
}  # fmt: skip
_FOREIGN = {
    "de": ("Das Bild zeigt {noun} in der Farbe {colour}.",
           "Auf diesem Bild sieht man {noun}, die Farbe ist {colour}.",
           "Eine einfache Zeichnung: {noun} in {colour} vor einem gemusterten Hintergrund.",
           "Hier ist {noun} zu sehen, und die Farbe davon ist {colour}."),
    "fr": ("Une image qui montre {noun} de couleur {colour}.",
           "Sur cette photo, on voit {noun} de couleur {colour}.",
           "Un dessin simple : {noun} de couleur {colour} sur un fond à motifs.",
           "Voici {noun} de couleur {colour}, au milieu de l'image."),
    "es": ("Una imagen que muestra {noun} de color {colour}.",
           "En esta foto se ve {noun} de color {colour}.",
           "Un dibujo sencillo: {noun} de color {colour} sobre un fondo con dibujos.",
           "Aquí se puede ver {noun} de color {colour} en la imagen."),
}  # fmt: skip


def foreign_caption(
    rng: np.random.Generator, language: str, kind: str, shape: str | None, digit: int | None, colour: str
) -> str:
    """A true sentence about the picture in ``language`` (de, fr, es)."""
    key = "digit" if kind == "digit" else str(shape)
    noun = _NOUNS[language].get(key, f"{'ein' if language == 'de' else 'un'} {shape}").format(d=digit)
    colour_word = _COLOURS[language].get(colour, colour)
    return _pick(rng, _FOREIGN[language]).format(noun=noun, colour=colour_word)


# -- URLs ------------------------------------------------------------------------------------------------

# fmt: off
_HOSTS = ("images.pictureshare.net", "cdn.shapeart.org", "media.clipartworld.com", "static.kidsdraw.io",
          "photos.blogspot-mirror.com", "img.stockpix.net", "uploads.designforum.org", "i.imgstore.co")
# fmt: on
_FOLDERS = ("uploads", "images", "media", "wp-content/uploads/2019/05", "gallery", "files", "thumbs")


def url(rng: np.random.Generator, slug: str, spam: bool = False) -> str:
    """A fake but plausible image URL; spam samples come from shop-like hosts."""
    host = f"www.{_pick(rng, _SITES)}.com" if spam else _pick(rng, _HOSTS)
    slug = re.sub(r"[^a-z0-9]+", "-", slug.lower())[:48].strip("-") or "image"
    ext = _pick(rng, ("jpg", "png", "jpeg", "webp"))
    return f"https://{host}/{_pick(rng, _FOLDERS)}/{slug}-{int(rng.integers(1, 10**6))}.{ext}"


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return options[int(rng.integers(len(options)))]
