"""Texts with known properties for the cleaning tests (no tests here): clean Brazilian Portuguese news
paragraphs, English and Spanish ones, and typical defects (boilerplate, symbols, very short texts, entities)."""

from __future__ import annotations

PT = [
    (
        "O governo federal anunciou nesta segunda-feira um novo programa de investimentos em saneamento "
        "básico para as cidades do Nordeste. Segundo o ministério, os recursos serão distribuídos ao longo de"
        " quatro anos e devem beneficiar mais de dois milhões de pessoas que ainda não têm acesso à rede de "
        "esgoto. A medida foi recebida com cautela pelos prefeitos, que cobram mais clareza sobre os "
        "critérios de seleção dos municípios."
    ),
    (
        "A seleção brasileira venceu a partida de ontem por dois gols a zero e garantiu a vaga na próxima "
        "fase do campeonato. O técnico elogiou a atuação do meio de campo e disse que a equipe ainda precisa "
        "melhorar a finalização. Os torcedores que foram ao estádio comemoraram até tarde da noite nas ruas "
        "do centro da cidade."
    ),
    (
        "Pesquisadores de uma universidade paulista descobriram uma nova espécie de sapo na Mata Atlântica. O"
        " animal, que mede menos de dois centímetros, vive entre as folhas caídas no chão da floresta e tem "
        "uma coloração que o ajuda a se esconder dos predadores. Os cientistas alertam que o desmatamento "
        "ameaça a sobrevivência da espécie."
    ),
    (
        "A inflação de outubro ficou abaixo das expectativas do mercado, puxada pela queda no preço dos "
        "alimentos. Economistas avaliam que o resultado abre espaço para uma redução da taxa de juros nos "
        "próximos meses, mas lembram que o cenário internacional ainda traz muitas incertezas para a economia"
        " do país."
    ),
    (
        "A biblioteca municipal reabriu suas portas depois de dois anos de reforma. O prédio, construído no "
        "início do século passado, ganhou uma nova sala de leitura para crianças, acesso para pessoas com "
        "deficiência e um acervo digital que pode ser consultado pela internet. A entrada é gratuita e o "
        "horário de funcionamento foi ampliado."
    ),
    (
        "Os moradores do bairro reclamam da falta de iluminação pública e da demora no recolhimento do lixo. "
        "Em uma reunião com representantes da prefeitura, eles entregaram um abaixo-assinado com mais de mil "
        "assinaturas e pediram uma solução urgente. A prefeitura prometeu uma resposta até o fim do mês."
    ),
    (
        "O festival de cinema da cidade recebeu neste ano mais de cem filmes de quinze países. A mostra "
        "competitiva destacou produções brasileiras de baixo orçamento, muitas delas feitas por diretores "
        "estreantes. O público lotou as sessões gratuitas na praça central durante toda a semana."
    ),
    (
        "A colheita de café deve bater um novo recorde nesta safra, de acordo com a estimativa divulgada pela"
        " companhia de abastecimento. O clima favorável nas principais regiões produtoras de Minas Gerais e "
        "do Espírito Santo contribuiu para o aumento da produtividade, e os exportadores esperam bons preços "
        "no mercado externo."
    ),
]
EN = [
    (
        "The city council approved a new budget on Monday that increases spending on public schools and road "
        "maintenance. Officials said the plan would be funded by higher property taxes and cuts to "
        "administrative costs, but several members voted against it and asked for more details about the long"
        " term impact."
    ),
    (
        "Scientists have discovered a new species of frog in the rainforest. The animal is less than two "
        "centimeters long and lives among the fallen leaves on the forest floor, where its color helps it "
        "hide from predators. Researchers warn that deforestation threatens its survival."
    ),
]
ES = [
    (
        "El gobierno anunció este lunes un nuevo programa de inversiones en infraestructura para las ciudades"
        " del norte del país. Según el ministerio, los recursos se distribuirán a lo largo de cuatro años y "
        "beneficiarán a más de dos millones de personas que todavía no tienen acceso a los servicios básicos."
    ),
    (
        "La selección nacional ganó el partido de anoche por dos goles a cero y aseguró su lugar en la "
        "siguiente fase del campeonato. El entrenador elogió el trabajo del mediocampo y dijo que el equipo "
        "todavía necesita mejorar la definición frente al arco."
    ),
]


def mojibake(text: str) -> str:
    """UTF-8 bytes read as Latin-1: 'ação' -> 'aÃ§Ã£o'."""
    return text.encode("utf-8").decode("latin-1")


BOILERPLATE = "\n".join(["Clique aqui para assinar a nossa newsletter e receber as novidades."] * 8)
SYMBOLS = (
    "Oferta imperdível para você e a sua família ### $$$ @@@ %%% &&& *** +++ === ||| ~~~ ^^^ >>> <<< {{{ }}} "
    "[[[ ]]] !!! ??? ;;; ::: "
) * 3 + "o melhor produto da loja, compre já e pague em dez vezes sem juros"
SHORT = ["O governo anunciou hoje um novo programa.", "A seleção brasileira venceu a partida de ontem."]
ENTITIES = (
    "A educa&ccedil;&atilde;o p&uacute;blica &eacute; a base de tudo, disse a professora durante a "
    "cerimônia de formatura da escola estadual, que reuniu alunos, pais e funcionários no ginásio. Ela lembrou "
    "que muitos dos formandos são os primeiros da família a concluir o ensino médio e pediu que "
    "continuem estudando."
)
