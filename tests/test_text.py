"""Untrusted names made safe to print (text.printable): one rule for every message that shows one."""

from fashion_cnn.text import printable


def test_names_keep_their_letters_and_lose_what_could_forge_or_hide_output():
    assert printable("Ankle boot, T-shirt/top, Schühe, 鞋 and $5") == "Ankle boot, T-shirt/top, Schühe, 鞋 and $5"
    # a new line, a terminal escape, a line separator, a byte that is not UTF-8 (a lone surrogate)
    assert printable("a\nb\x1b[2Jc\u2028d\udcffe") == "a\\nb\\x1b[2Jc\\u2028d\\udcffe"
    # a right-to-left override (shows "gnp.exe" as "exe.png") and a zero-width space: format characters
    assert printable("photo\u202egnp.exe\u200b") == "photo\\u202egnp.exe\\u200b"
