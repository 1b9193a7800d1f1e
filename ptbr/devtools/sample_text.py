"""Deterministic Portuguese-like text for tests, benchmarks and smoke runs.

The real corpus is not available offline in every environment, and tests need documents whose
exact content they know. The generator draws words with a Zipf-like frequency from a list of
common Brazilian Portuguese words (accents, cedillas, tildes included), so BPE training and
tokenization speed behave roughly as on real text.
"""

from __future__ import annotations

import random

_WORD_TEXT = (
    "de a o que e do da em um para é com não uma os no se na por mais as dos como mas foi ao ele "
    "das tem à seu sua ou ser quando muito há nos já está eu também só pelo pela até isso ela "
    "entre era depois sem mesmo aos ter seus quem nas me esse eles estão você tinha foram essa "
    "num nem suas meu às minha têm numa pelos elas havia seja qual será nós tenho lhe deles "
    "essas esses pelas este fosse dele tu te vocês vos lhes meus minhas teu tua teus tuas nosso "
    "nossa nossos nossas dela delas esta estes estas aquele aquela aqueles aquelas isto aquilo "
    "estou está estamos estão estive esteve estivemos estiveram estava estávamos estavam "
    "ação educação informação população situação relação produção função região país governo "
    "brasil são paulo rio janeiro belo horizonte salvador fortaleza recife porto alegre manaus "
    "cidade estado município prefeitura câmara senado eleição política econômica econômico "
    "crescimento desenvolvimento saúde público pública serviço serviços trabalho trabalhadores "
    "história cultura música futebol seleção campeonato jogador técnico vitória derrota "
    "ciência tecnologia pesquisa universidade escola professor professora alunos ensino "
    "língua portuguesa idioma palavra frase texto livro autor literatura poesia romance "
    "água floresta amazônia natureza meio ambiente clima chuva verão inverno outono primavera "
    "família criança crianças mãe pai irmão irmã avó avô coração amor saudade alegria "
    "manhã tarde noite hoje amanhã ontem semana mês ano década século período "
    "também através além após porém contudo entretanto portanto então ainda sempre nunca "
    "grande pequeno novo nova antigo antiga primeiro primeira último última melhor pior "
    "fácil difícil possível importante necessário rápido lento próximo distante único "
    "fazer dizer poder ir ver dar saber querer chegar passar ficar deixar pensar viver "
    "começar conhecer falar encontrar levar sentir seguir acreditar lembrar mostrar "
    "açúcar café pão feijão arroz farinha mandioca caju açaí guaraná limão maçã"
)
WORDS = _WORD_TEXT.split()

PUNCT_END = (".", ".", ".", ".", "!", "?", "...")
SYLLABLES = (
    "ca",
    "ção",
    "men",
    "te",
    "pa",
    "ra",
    "lo",
    "bra",
    "sil",
    "ei",
    "ro",
    "ma",
    "nhã",
    "des",
    "en",
    "vol",
    "vi",
    "do",
    "cu",
    "ni",
    "ci",
    "pal",
    "es",
    "ta",
    "dual",
    "for",
    "mu",
    "lá",
    "rio",
    "gem",
    "ões",
    "ân",
    "ci",
    "a",
    "pro",
    "gra",
    "ma",
    "ti",
    "co",
    "qui",
    "lham",
    "bo",
    "la",
    "ú",
    "ni",
    "ca",
)


def _weights(n: int) -> list[float]:
    return [1.0 / (i + 2) ** 0.9 for i in range(n)]


def portuguese_sentence(rng: random.Random, min_words: int = 4, max_words: int = 18) -> str:
    """One sentence: capitalised, a comma now and then, a number now and then."""
    n = rng.randint(min_words, max_words)
    words = rng.choices(WORDS, weights=_WEIGHTS, k=n)
    for i in range(n):  # rarer words made of syllables: an open vocabulary, so BPE learns sub-words
        if rng.random() < 0.2:
            words[i] = "".join(rng.choices(SYLLABLES, k=rng.randint(2, 5)))
    if rng.random() < 0.15:
        words.insert(rng.randrange(len(words)), str(rng.randint(1, 2030)))
    if n > 8 and rng.random() < 0.5:
        i = rng.randrange(2, n - 2)
        words[i] = words[i] + ","
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words) + rng.choice(PUNCT_END)


def portuguese_document(rng: random.Random, min_sentences: int = 2, max_sentences: int = 30) -> str:
    """A document of a few paragraphs (paragraphs separated by one newline)."""
    sentences = [portuguese_sentence(rng) for _ in range(rng.randint(min_sentences, max_sentences))]
    paragraphs, cur = [], []
    for s in sentences:
        cur.append(s)
        if rng.random() < 0.25:
            paragraphs.append(" ".join(cur))
            cur = []
    if cur:
        paragraphs.append(" ".join(cur))
    return "\n".join(paragraphs)


def portuguese_documents(n: int, seed: int = 0, **kwargs: int) -> list[str]:
    """``n`` deterministic documents for a given ``seed``."""
    rng = random.Random(seed)
    return [portuguese_document(rng, **kwargs) for _ in range(n)]


_WEIGHTS = _weights(len(WORDS))
