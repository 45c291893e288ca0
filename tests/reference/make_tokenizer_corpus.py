#!/usr/bin/env python3
"""Writes tests/data/tokenizer_corpus.txt: a seeded mix of scripts, numbers, whitespace, emoji,
code and special-token strings that the tokenizer tests encode line by line and whole
(docs/tokenizer-sentencepiece.md). Run once; the output is committed."""
import random
import sys

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Ça a été un été très chaud à Montréal, où l'on s'est baigné dans le fleuve.",
    "Die Größe der Straße überrascht Jürgen; Äpfel, Öl und Übermut.",
    "¿Dónde está la biblioteca? Mañana iré con Begoña y Íñigo.",
    "Zażółć gęślą jaźń. Čeština, Slovenčina, Ελληνικά: καλημέρα κόσμε.",
    "Привет, мир! Съешь же ещё этих мягких французских булок.",
    "今日はいい天気ですね。東京タワーに行きましょう。",
    "我们在北京大学学习自然语言处理和机器学习。",
    "한국어 문장도 포함합니다: 안녕하세요, 세계!",
    "مرحبا بالعالم، هذه جملة باللغة العربية مع أرقام ١٢٣٤٥.",
    "שלום עולם, זה משפט בעברית.",
    "नमस्ते दुनिया, यह हिंदी में एक वाक्य है। क्षत्रिय ज्ञान",
    "தமிழ் ஒரு பழமையான மொழி. ไทยเป็นภาษาที่สวยงาม",
    "Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 ❤️ 🇫🇷🇯🇵 😀😃😄 🧑🏿‍💻",
    "Numbers: 3.14159265358979 1,234,567.89 -42 0x1F 1e-10 2024-06-30 12:45:07",
    "Long number: 123456789012345678901234567890 and 000000 and 9999999999.",
    "def tokenize(text: str) -> list[int]:\n    return [ord(c) for c in text if c != ' ']",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }  // dot product",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "<html><body class=\"main\">Hello &amp; welcome</body></html>",
    "https://example.com/path?query=value&x=1#frag user@example.org",
    "Mixed   spaces\tand\ttabs    and  trailing   ",
    "  leading spaces, then\t\ttwo tabs, then     five spaces.",
    "ALL CAPS SHOUTING and lowercase whispering and MiXeD CaSe.",
    "Ligatures ﬁ ﬂ, full-width ＡＢＣ１２３, superscripts x² y³, ½ ¼, Ω Å ﬀ.",
    "Combining: e\u0301 a\u0308 n\u0303 vs é ä ñ; Hangul jamo \u1100\u1161\u11a8.",
    "Zero width: a\u200bb c\u200cd e\u200de, soft\u00adhyphen, nbsp\u00a0here.",
    "Special tokens inside text: <s> hello </s> <|endoftext|> [CLS] x [SEP] <|im_start|>user",
    "Chat: <|im_start|>system\nYou are helpful.<|im_end|> <unk> <pad> [MASK] [UNK]",
    "Punctuation!!! ??? ... --- ''' \"\"\" ((( ))) [[[ ]]] {{{ }}} ;;; :::",
    "Contractions: don't, won't, I'm, you're, they've, she'll, we'd, it's, O'Neil's.",
    "Vietnamese: Tiếng Việt có nhiều dấu: ắ ằ ẳ ẵ ặ ố ồ ổ ỗ ộ.",
    "Math: ∀x∈ℝ, ∃y: x²+y²≥0; ∑ᵢ aᵢ = ∫₀¹ f(t) dt ≈ π/4 → ∞.",
]
WORDS = ("time person year way day thing man world life hand part child eye woman place work "
         "week case point government company number group problem fact très déjà naïve café "
         "über schön größer 数据 模型 学习 東京 日本語 слово язык مدينة كتاب हिंदी भाषा 2023 "
         "1000000 3.5 42nd token tokenizer merge model vocabulary").split()


def main(out_path):
    rng = random.Random(12)
    lines = []
    for s in SENTENCES:
        lines.extend(s.split("\n"))
    while sum(len(l) + 1 for l in lines) < 16000:
        kind = rng.random()
        if kind < 0.5:
            n = rng.randint(3, 14)
            seps = [" ", " ", " ", "  ", "\t", ", ", ". "]
            lines.append("".join(rng.choice(WORDS) + rng.choice(seps) for _ in range(n)).rstrip())
        elif kind < 0.8:
            a, b = rng.sample(SENTENCES, 2)
            lines.append((a + " " + b).replace("\n", " "))
        else:
            lines.append(" ".join(str(rng.randint(0, 10 ** rng.randint(1, 15))) for _ in range(5)))
    lines.insert(40, "")
    lines.insert(80, "   ")
    with open(out_path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "tests/data/tokenizer_corpus.txt")
