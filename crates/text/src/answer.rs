//! Answer normalisation: the official VQA evaluation normalisation and LXMERT's
//! `convert_ans` (reference §1.2).

/// The official VQA evaluation normalisation (`vqaEval.py`: `processPunctuation` then
/// `processDigitArticle`, after replacing newlines/tabs by spaces and trimming):
///
/// - punctuation `; : / ' [ ] " ( ) = + \ _ > < @ ` , ?` is deleted when the text has that
///   character next to a space, or has a digit-comma-digit anywhere; otherwise it becomes a space;
/// - a `.` not followed by a digit is deleted (at most 32 of them, as the original passes
///   `re.UNICODE` as the count);
/// - lower case; number words `none zero one … ten` → digits; articles `a an the` dropped;
///   contraction fix-ups (`dont` → `don’t`, …, the original table verbatim); single spaces.
///
/// ```
/// use msp_text::normalize_answer;
/// assert_eq!(normalize_answer("Two"), "2");
/// assert_eq!(normalize_answer("The two dogs."), "2 dogs");
/// assert_eq!(normalize_answer("dont"), "don’t");
/// ```
pub fn normalize_answer(answer: &str) -> String {
    let a = answer.replace(['\n', '\t'], " ");
    let a = process_punctuation(a.trim());
    process_digit_article(&a)
}

const PUNCT: [char; 19] = [
    ';', ':', '/', '\'', '[', ']', '"', '(', ')', '=', '+', '\\', '_', '>', '<', '@', '`', ',', '?',
];

fn has_digit_comma_digit(s: &str) -> bool {
    let c: Vec<char> = s.chars().collect();
    c.windows(3)
        .any(|w| w[0].is_ascii_digit() && w[1] == ',' && w[2].is_ascii_digit())
}

fn process_punctuation(input: &str) -> String {
    let comma = has_digit_comma_digit(input);
    let mut out = input.to_string();
    for p in PUNCT {
        let spaced = input.contains(&format!("{p} ")) || input.contains(&format!(" {p}"));
        out = if spaced || comma {
            out.replace(p, "")
        } else {
            out.replace(p, " ")
        };
    }
    // periodStrip = "(?!<=\d)(\.)(?!\d)": the first group is a (mistyped) lookahead that
    // always holds at a '.', so this deletes every '.' not followed by a digit, at most 32.
    let chars: Vec<char> = out.chars().collect();
    let mut result = String::with_capacity(out.len());
    let mut removed = 0;
    for (i, &c) in chars.iter().enumerate() {
        let next_digit = chars.get(i + 1).is_some_and(|n| n.is_ascii_digit());
        if c == '.' && !next_digit && removed < 32 {
            removed += 1;
            continue;
        }
        result.push(c);
    }
    result
}

fn process_digit_article(input: &str) -> String {
    let lower = input.to_lowercase();
    let mut words: Vec<&str> = Vec::new();
    for w in lower.split_whitespace() {
        let w = match w {
            "none" | "zero" => "0",
            "one" => "1",
            "two" => "2",
            "three" => "3",
            "four" => "4",
            "five" => "5",
            "six" => "6",
            "seven" => "7",
            "eight" => "8",
            "nine" => "9",
            "ten" => "10",
            other => other,
        };
        if !matches!(w, "a" | "an" | "the") {
            words.push(w);
        }
    }
    words
        .iter()
        .map(|w| {
            CONTRACTIONS
                .iter()
                .find(|(k, _)| k == w)
                .map_or(*w, |(_, v)| *v)
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// LXMERT's `AnswerTable.convert_ans` (`qa_answer_table.py`), exactly: lower case; a trailing
/// `.` removed; one leading `a `, `an `, `the ` removed (in that order, each at most once);
/// then the table `a man`/`the man` → `man`, `a woman`/`the woman` → `woman`, number words
/// `one`…`ten` → digits, `grey` → `gray`.
///
/// ```
/// use msp_text::convert_ans;
/// assert_eq!(convert_ans("The Grey."), "gray");
/// assert_eq!(convert_ans("an apple"), "apple");
/// ```
pub fn convert_ans(answer: &str) -> String {
    if answer.is_empty() {
        return String::new();
    }
    let mut a = answer.to_lowercase();
    if a.ends_with('.') {
        a.pop();
        a = a.trim().to_string();
    }
    for art in ["a ", "an ", "the "] {
        if let Some(rest) = a.strip_prefix(art) {
            a = rest.trim().to_string();
        }
    }
    let mapped = match a.as_str() {
        "a man" | "the man" => "man",
        "a woman" | "the woman" => "woman",
        "one" => "1",
        "two" => "2",
        "three" => "3",
        "four" => "4",
        "five" => "5",
        "six" => "6",
        "seven" => "7",
        "eight" => "8",
        "nine" => "9",
        "ten" => "10",
        "grey" => "gray",
        _ => return a,
    };
    mapped.to_string()
}

/// The VQA evaluation's contraction table, verbatim (keys and values mix `'` and `’` as in
/// the original).
const CONTRACTIONS: &[(&str, &str)] = &[
    ("aint", "ain't"),
    ("arent", "aren't"),
    ("cant", "can't"),
    ("couldve", "could've"),
    ("couldnt", "couldn't"),
    ("couldn'tve", "couldn’t’ve"),
    ("couldnt’ve", "couldn’t’ve"),
    ("didnt", "didn’t"),
    ("doesnt", "doesn’t"),
    ("dont", "don’t"),
    ("hadnt", "hadn’t"),
    ("hadnt’ve", "hadn’t’ve"),
    ("hadn'tve", "hadn’t’ve"),
    ("hasnt", "hasn’t"),
    ("havent", "haven’t"),
    ("hed", "he’d"),
    ("hed’ve", "he’d’ve"),
    ("he’dve", "he’d’ve"),
    ("hes", "he’s"),
    ("howd", "how’d"),
    ("howll", "how’ll"),
    ("hows", "how’s"),
    ("Id’ve", "I’d’ve"),
    ("I’dve", "I’d’ve"),
    ("Im", "I’m"),
    ("Ive", "I’ve"),
    ("isnt", "isn’t"),
    ("itd", "it’d"),
    ("itd’ve", "it’d’ve"),
    ("it’dve", "it’d’ve"),
    ("itll", "it’ll"),
    ("let’s", "let’s"),
    ("maam", "ma’am"),
    ("mightnt", "mightn’t"),
    ("mightnt’ve", "mightn’t’ve"),
    ("mightn’tve", "mightn’t’ve"),
    ("mightve", "might’ve"),
    ("mustnt", "mustn’t"),
    ("mustve", "must’ve"),
    ("neednt", "needn’t"),
    ("notve", "not’ve"),
    ("oclock", "o’clock"),
    ("oughtnt", "oughtn’t"),
    ("ow’s’at", "’ow’s’at"),
    ("’ows’at", "’ow’s’at"),
    ("’ow’sat", "’ow’s’at"),
    ("shant", "shan’t"),
    ("shed’ve", "she’d’ve"),
    ("she’dve", "she’d’ve"),
    ("she’s", "she’s"),
    ("shouldve", "should’ve"),
    ("shouldnt", "shouldn’t"),
    ("shouldnt’ve", "shouldn’t’ve"),
    ("shouldn’tve", "shouldn’t’ve"),
    ("somebody’d", "somebodyd"),
    ("somebodyd’ve", "somebody’d’ve"),
    ("somebody’dve", "somebody’d’ve"),
    ("somebodyll", "somebody’ll"),
    ("somebodys", "somebody’s"),
    ("someoned", "someone’d"),
    ("someoned’ve", "someone’d’ve"),
    ("someone’dve", "someone’d’ve"),
    ("someonell", "someone’ll"),
    ("someones", "someone’s"),
    ("somethingd", "something’d"),
    ("somethingd’ve", "something’d’ve"),
    ("something’dve", "something’d’ve"),
    ("somethingll", "something’ll"),
    ("thats", "that’s"),
    ("thered", "there’d"),
    ("thered’ve", "there’d’ve"),
    ("there’dve", "there’d’ve"),
    ("therere", "there’re"),
    ("theres", "there’s"),
    ("theyd", "they’d"),
    ("theyd’ve", "they’d’ve"),
    ("they’dve", "they’d’ve"),
    ("theyll", "they’ll"),
    ("theyre", "they’re"),
    ("theyve", "they’ve"),
    ("twas", "’twas"),
    ("wasnt", "wasn’t"),
    ("wed’ve", "we’d’ve"),
    ("we’dve", "we’d’ve"),
    ("weve", "we've"),
    ("werent", "weren’t"),
    ("whatll", "what’ll"),
    ("whatre", "what’re"),
    ("whats", "what’s"),
    ("whatve", "what’ve"),
    ("whens", "when’s"),
    ("whered", "where’d"),
    ("wheres", "where's"),
    ("whereve", "where’ve"),
    ("whod", "who’d"),
    ("whod’ve", "who’d’ve"),
    ("who’dve", "who’d’ve"),
    ("wholl", "who’ll"),
    ("whos", "who’s"),
    ("whove", "who've"),
    ("whyll", "why’ll"),
    ("whyre", "why’re"),
    ("whys", "why’s"),
    ("wont", "won’t"),
    ("wouldve", "would’ve"),
    ("wouldnt", "wouldn’t"),
    ("wouldnt’ve", "wouldn’t’ve"),
    ("wouldn’tve", "wouldn’t’ve"),
    ("yall", "y’all"),
    ("yall’ll", "y’all’ll"),
    ("y’allll", "y’all’ll"),
    ("yall’d’ve", "y’all’d’ve"),
    ("y’alld’ve", "y’all’d’ve"),
    ("y’all’dve", "y’all’d’ve"),
    ("youd", "you’d"),
    ("youd’ve", "you’d’ve"),
    ("you’dve", "you’d’ve"),
    ("youll", "you’ll"),
    ("youre", "you’re"),
    ("youve", "you’ve"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vqa_normalisation_known_cases() {
        // Hand-derived from vqaEval.py's rules.
        assert_eq!(normalize_answer("Yes"), "yes");
        assert_eq!(normalize_answer("  two\t"), "2");
        assert_eq!(normalize_answer("None"), "0");
        assert_eq!(normalize_answer("a dog"), "dog");
        assert_eq!(normalize_answer("The Man"), "man");
        assert_eq!(normalize_answer("dont"), "don’t");
        assert_eq!(normalize_answer("isnt"), "isn’t");
        assert_eq!(normalize_answer("whats"), "what’s");
        // "'" without a neighbouring space becomes a space: "don't" → "don t".
        assert_eq!(normalize_answer("don't"), "don t");
        // With a space next to it, it is deleted instead.
        assert_eq!(normalize_answer("dogs ' bone"), "dogs bone");
        // Digit-comma-digit: commas deleted, not spaced.
        assert_eq!(normalize_answer("1,000"), "1000");
        assert_eq!(normalize_answer("red,white"), "red white");
        // Periods: dropped unless before a digit.
        assert_eq!(normalize_answer("3.5"), "3.5");
        assert_eq!(normalize_answer("st. louis."), "st louis");
        assert_eq!(normalize_answer("yes?"), "yes");
        assert_eq!(normalize_answer("t-shirt"), "t-shirt");
        assert_eq!(normalize_answer("black/white"), "black white");
    }

    #[test]
    fn convert_ans_known_cases() {
        assert_eq!(convert_ans(""), "");
        assert_eq!(convert_ans("Two"), "2");
        assert_eq!(convert_ans("A man."), "man");
        assert_eq!(convert_ans("the woman"), "woman");
        assert_eq!(convert_ans("grey"), "gray");
        assert_eq!(convert_ans("an orange"), "orange");
        // Only the prefixes, once each, in the order a/an/the.
        assert_eq!(convert_ans("the a cat"), "a cat");
        assert_eq!(convert_ans("a the cat"), "cat");
        assert_eq!(convert_ans("eleven"), "eleven");
        assert_eq!(convert_ans("1.5."), "1.5");
    }
}
