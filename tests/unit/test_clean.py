"""Corpus cleaning on a corpus with known defects: exact counts per rule, clean Portuguese kept, repairs
applied, deterministic output, dry run, and the bad inputs."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.train_harness import REPO

PT = [
    ('O governo federal anunciou nesta segunda-feira um novo programa de investimentos em saneamento '
     'básico para as cidades do Nordeste. Segundo o ministério, os recursos serão distribuídos ao longo de'
     ' quatro anos e devem beneficiar mais de dois milhões de pessoas que ainda não têm acesso à rede de '
     'esgoto. A medida foi recebida com cautela pelos prefeitos, que cobram mais clareza sobre os '
     'critérios de seleção dos municípios.'),
    ('A seleção brasileira venceu a partida de ontem por dois gols a zero e garantiu a vaga na próxima '
     'fase do campeonato. O técnico elogiou a atuação do meio de campo e disse que a equipe ainda precisa '
     'melhorar a finalização. Os torcedores que foram ao estádio comemoraram até tarde da noite nas ruas '
     'do centro da cidade.'),
    ('Pesquisadores de uma universidade paulista descobriram uma nova espécie de sapo na Mata Atlântica. O'
     ' animal, que mede menos de dois centímetros, vive entre as folhas caídas no chão da floresta e tem '
     'uma coloração que o ajuda a se esconder dos predadores. Os cientistas alertam que o desmatamento '
     'ameaça a sobrevivência da espécie.'),
    ('A inflação de outubro ficou abaixo das expectativas do mercado, puxada pela queda no preço dos '
     'alimentos. Economistas avaliam que o resultado abre espaço para uma redução da taxa de juros nos '
     'próximos meses, mas lembram que o cenário internacional ainda traz muitas incertezas para a economia'
     ' do país.'),
    ('A biblioteca municipal reabriu suas portas depois de dois anos de reforma. O prédio, construído no '
     'início do século passado, ganhou uma nova sala de leitura para crianças, acesso para pessoas com '
     'deficiência e um acervo digital que pode ser consultado pela internet. A entrada é gratuita e o '
     'horário de funcionamento foi ampliado.'),
    ('Os moradores do bairro reclamam da falta de iluminação pública e da demora no recolhimento do lixo. '
     'Em uma reunião com representantes da prefeitura, eles entregaram um abaixo-assinado com mais de mil '
     'assinaturas e pediram uma solução urgente. A prefeitura prometeu uma resposta até o fim do mês.'),
    ('O festival de cinema da cidade recebeu neste ano mais de cem filmes de quinze países. A mostra '
     'competitiva destacou produções brasileiras de baixo orçamento, muitas delas feitas por diretores '
     'estreantes. O público lotou as sessões gratuitas na praça central durante toda a semana.'),
    ('A colheita de café deve bater um novo recorde nesta safra, de acordo com a estimativa divulgada pela'
     ' companhia de abastecimento. O clima favorável nas principais regiões produtoras de Minas Gerais e '
     'do Espírito Santo contribuiu para o aumento da produtividade, e os exportadores esperam bons preços '
     'no mercado externo.'),
]
EN = [
    ('The city council approved a new budget on Monday that increases spending on public schools and road '
     'maintenance. Officials said the plan would be funded by higher property taxes and cuts to '
     'administrative costs, but several members voted against it and asked for more details about the long'
     ' term impact.'),
    ('Scientists have discovered a new species of frog in the rainforest. The animal is less than two '
     'centimeters long and lives among the fallen leaves on the forest floor, where its color helps it '
     'hide from predators. Researchers warn that deforestation threatens its survival.'),
]
ES = [
    ('El gobierno anunció este lunes un nuevo programa de inversiones en infraestructura para las ciudades'
     ' del norte del país. Según el ministerio, los recursos se distribuirán a lo largo de cuatro años y '
     'beneficiarán a más de dos millones de personas que todavía no tienen acceso a los servicios básicos.'),
    ('La selección nacional ganó el partido de anoche por dos goles a cero y aseguró su lugar en la '
     'siguiente fase del campeonato. El entrenador elogió el trabajo del mediocampo y dijo que el equipo '
     'todavía necesita mejorar la definición frente al arco.'),
]


def mojibake(text: str) -> str:
    """UTF-8 bytes read as Latin-1: 'ação' -> 'aÃ§Ã£o'."""
    return text.encode("utf-8").decode("latin-1")


BOILERPLATE = "\n".join(["Clique aqui para assinar a nossa newsletter e receber as novidades."] * 8)
SYMBOLS = ("Oferta imperdível para você e a sua família ### $$$ @@@ %%% &&& *** +++ === ||| ~~~ ^^^ >>> <<< {{{ }}} "
           "[[[ ]]] !!! ??? ;;; ::: ") * 3 + "o melhor produto da loja, compre já e pague em dez vezes sem juros"
SHORT = ["O governo anunciou hoje um novo programa.", "A seleção brasileira venceu a partida de ontem."]
ENTITIES = ("A educa&ccedil;&atilde;o p&uacute;blica &eacute; a base de tudo, disse a professora durante a "
            "cerimônia de formatura da escola estadual, que reuniu alunos, pais e funcionários no ginásio. Ela lembrou "
            "que muitos dos formandos são os primeiros da família a concluir o ensino médio e pediu que "
            "continuem estudando.")


def defect_corpus(root: Path) -> Path:
    """a.jsonl: 6 clean, 1 mojibake (repairable), 1 English, 1 Spanish. b.jsonl: 2 exact duplicates of a.jsonl
    (case, spacing), 1 near duplicate (one word changed), 1 clean, 1 English, 1 Spanish, boilerplate, a
    symbol-heavy page, 2 very short documents, 1 clean with HTML entities."""
    root.mkdir(parents=True)
    a = PT[:6] + [mojibake(PT[6]), EN[0], ES[0]]
    b = [PT[0].upper(), "  " + PT[2].replace(" ", "   ") + "  ", PT[1].replace("ontem", "domingo"), PT[7], EN[1],
         ES[1], BOILERPLATE, SYMBOLS, *SHORT, ENTITIES]
    for name, docs in (("a.jsonl", a), ("b.jsonl", b)):
        (root / name).write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in docs))
    return root


def ptbr(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ptbr.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def kept_texts(out: Path) -> list[str]:
    return [json.loads(line)["text"] for f in sorted(out.glob("*.jsonl")) for line in f.read_text().splitlines()]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory) -> tuple[Path, Path, subprocess.CompletedProcess]:
    tmp = tmp_path_factory.mktemp("clean")
    corpus = defect_corpus(tmp / "in")
    proc = ptbr("corpus", "clean", "--input", str(corpus), "--output", str(tmp / "out"), "--workers", "2")
    return corpus, tmp / "out", proc


def test_each_defect_is_dropped_by_its_rule_and_clean_text_is_kept(cleaned):
    _, out, proc = cleaned
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["dropped_by_rule"] == {"language:en": 2, "language:es": 2, "quality:too_few_words": 2,
                                         "quality:duplicate_lines": 1, "quality:symbol_ratio": 1,
                                         "exact_duplicate": 2, "near_duplicate": 1}
    kept = kept_texts(out)
    assert len(kept) == 9 == report["steps_kept"]["near_dedup"]["documents"]
    assert report["steps_kept"]["read"]["documents"] == 20
    assert [report["steps_kept"][s]["documents"] for s in ("language", "quality", "exact_dedup")] == [16, 12, 10]
    for text in PT:  # every clean document once, the first of each duplicate group
        assert sum(1 for k in kept if k == text) == 1, text[:40]
    assert any("educação pública é a base" in k for k in kept)  # HTML entities decoded
    assert not any("Ã" in k for k in kept)  # the mojibake was repaired (to PT[6] itself)
    assert report["sources"]["a.jsonl"]["read"]["documents"] == 9
    assert all(len(v) >= 1 and v[0]["text"] for v in report["examples"].values())
    assert "dropped by rule:" in proc.stdout


def test_output_is_deterministic_and_dry_run_writes_nothing(cleaned, tmp_path):
    corpus, out, _ = cleaned
    again = ptbr("corpus", "clean", "--input", str(corpus), "--output", str(tmp_path / "again"), "--workers", "1")
    assert again.returncode == 0, again.stderr[-2000:]
    for f in out.glob("*.jsonl"):
        assert (tmp_path / "again" / f.name).read_bytes() == f.read_bytes()
    r1, r2 = (json.loads((d / "report.json").read_text()) for d in (out, tmp_path / "again"))
    for r in (r1, r2):
        r.pop("seconds"), r.pop("timing")
    assert r1 == r2
    dry = ptbr("corpus", "clean", "--input", str(corpus), "--output", str(tmp_path / "dry"), "--dry-run",
               "--report", str(tmp_path / "dry_report.json"))
    assert dry.returncode == 0 and not (tmp_path / "dry").exists()
    assert json.loads((tmp_path / "dry_report.json").read_text())["dropped_by_rule"] == r1["dropped_by_rule"]


def test_near_dedup_threshold_is_the_bands_and_rows(tmp_path):
    from ptbr.clean.config import CleanConfig

    cfg = CleanConfig.load(REPO / "configs" / "clean" / "pt-br.yaml")
    assert cfg.near_dedup.bands * cfg.near_dedup.rows == 112
    assert cfg.near_dedup.threshold == pytest.approx(0.719, abs=1e-3)


def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path):
    def error_of(*args: str) -> str:
        proc = ptbr("corpus", "clean", *args)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        [line] = [ln for ln in proc.stderr.splitlines() if ln.startswith("ptbr: error:")]
        return line

    english = tmp_path / "en"
    english.mkdir()
    (english / "e.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in EN))
    assert "every one of the 2 documents was dropped" in error_of("--input", str(english), "--output",
                                                                  str(tmp_path / "o"))
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob(".o.tmp-*"))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.jsonl.gz").write_bytes(gzip.compress(b'{"text": "ok"}\n')[:20])
    assert "cannot read" in error_of("--input", str(broken), "--output", str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert error_of("--input", str(empty), "--output", str(tmp_path / "o"))
    exists = tmp_path / "exists"
    exists.mkdir()
    assert "already exists; pass --overwrite" in error_of("--input", str(english), "--output", str(exists))
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("quality:\n  min_wrods: 3\n")
    assert "quality.min_wrods" in error_of("--input", str(english), "--output", str(tmp_path / "o"), "--config",
                                           str(bad_cfg))


def test_shards_build_clean_builds_from_the_cleaned_corpus_and_reuses_it(cleaned, tmp_path):
    corpus, _, _ = cleaned
    assert ptbr("tokenizer", "train", "--input", str(corpus), "--output", str(tmp_path / "tok.json"), "--vocab-size",
                "300", "--quiet").returncode == 0
    build = ("shards", "build", "--input", str(corpus), "--tokenizer", str(tmp_path / "tok.json"), "--output",
             str(tmp_path / "shards"), "--seq-len", "16", "--val-fraction", "0", "--clean", "--quiet")
    first = ptbr(*build)
    assert first.returncode == 0, first.stderr[-2000:]
    manifest = json.loads((tmp_path / "shards" / "manifest.json").read_text())
    assert manifest["stats"]["documents"] == 9  # the cleaned documents, not the 20 read
    assert (tmp_path / "shards.cleaned" / "report.json").is_file()
    second = ptbr(*build)
    assert second.returncode == 0 and "up to date (same inputs and config); reusing it" in second.stdout + second.stderr


def test_a_file_in_another_encoding_is_named_in_one_warning(tmp_path):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "utf8.txt").write_text(PT[0], encoding="utf-8")
    (mixed / "latin1.txt").write_bytes(PT[1].encode("latin-1"))
    proc = ptbr("corpus", "clean", "--input", str(mixed), "--output", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr[-2000:]
    [warning] = [ln for ln in proc.stdout.splitlines() if "invalid UTF-8 sequences were replaced" in ln]
    assert "iconv" in warning
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["read"]["invalid_utf8_replaced"] > 0


def test_cleaning_leaves_the_calling_process_signals_alone(cleaned):
    """shards build --clean cleans, then starts its own worker pool in the same process: that pool must still be
    able to stop its workers with SIGTERM (an ignored SIGTERM is inherited; a first version hung here)."""
    corpus, _, _ = cleaned
    code = ("import signal; from ptbr.clean.config import CleanConfig; from ptbr.clean.pipeline import clean; "
            "before = signal.getsignal(signal.SIGINT); "
            f"clean([{str(corpus)!r}], None, CleanConfig(), workers=2, dry_run=True, log=lambda m: None); "
            "print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL, signal.getsignal(signal.SIGINT) == before)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0 and proc.stdout.split()[-2:] == ["True", "True"], proc.stdout + proc.stderr[-2000:]


TYPOGRAPHY = ("Machado de Assis escreveu: “Não tive filhos, não transmiti a nenhuma criatura o legado da nossa "
              "miséria.” O narrador — um defunto autor — comenta a própria vida com ironia… E o leitor pergunta: "
              "«que livro é este?» A resposta, dizia o crítico, está no ‘método’ do capítulo, e a obra continua a ser "
              "lida nas escolas de todo o país, com edições novas a cada ano – de 1881 a hoje.")


def test_repair_fixes_what_is_broken_and_keeps_typography_byte_for_byte(tmp_path):
    import unicodedata

    from ptbr.clean.config import CleanConfig
    from ptbr.clean.rules import repair

    cfg = CleanConfig()
    assert repair(TYPOGRAPHY, cfg).encode() == unicodedata.normalize("NFC", TYPOGRAPHY).encode()
    decomposed = unicodedata.normalize("NFD", TYPOGRAPHY)  # NFC is the one change allowed
    assert repair(decomposed, cfg).encode() == unicodedata.normalize("NFC", TYPOGRAPHY).encode()
    assert repair(mojibake("“ação” — é…"), cfg) == "“ação” — é…"  # mojibake of the typography itself
    assert repair("a educa&ccedil;&atilde;o\x00\x07 p&uacute;blica", cfg) == "a educação pública"
    assert repair("ﬁm ＡＢＣ", cfg) == "ﬁm ＡＢＣ"  # ligatures and full-width: written that way, kept

    corpus = tmp_path / "in"
    corpus.mkdir()
    (corpus / "lit.jsonl").write_text(json.dumps({"text": TYPOGRAPHY}, ensure_ascii=False) + "\n", encoding="utf-8")
    proc = ptbr("corpus", "clean", "--input", str(corpus), "--output", str(tmp_path / "out"), "--workers", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert kept_texts(tmp_path / "out") == [unicodedata.normalize("NFC", TYPOGRAPHY)]
