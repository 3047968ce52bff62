//! The world's vocabulary: object categories (things, background stuff, parts), attributes,
//! scene types and the action rules that say which pairs of categories can interact.
//!
//! Everything here is static data in a fixed order, so label ids and the tokenizer vocabulary
//! are the same for every seed; a preset may use only a prefix-by-group subset (see
//! [`Lexicon::new`]).

/// The super-category of an object category; confusable labels come from the same one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Super {
    Person,
    Animal,
    Vehicle,
    Furniture,
    Food,
    Clothing,
    Thing,
    Stuff,
    Part,
}

impl Super {
    /// Every super-category, things first (`THINGS` is a prefix), then stuff and parts.
    pub(crate) const ALL: [Super; 9] = [
        Super::Person,
        Super::Animal,
        Super::Vehicle,
        Super::Furniture,
        Super::Food,
        Super::Clothing,
        Super::Thing,
        Super::Stuff,
        Super::Part,
    ];
    /// The super-categories of things (objects a scene is made of).
    pub(crate) const THINGS: &'static [Super] = Super::ALL.split_at(7).0;

    /// The word a question uses for the whole group ("Which animal …?").
    pub(crate) fn group_word(self) -> Option<&'static str> {
        match self {
            Super::Person => Some("person"),
            Super::Animal => Some("animal"),
            Super::Vehicle => Some("vehicle"),
            Super::Furniture => Some("furniture"),
            Super::Food => Some("food"),
            Super::Clothing => Some("clothing"),
            _ => None,
        }
    }

    /// How much an object of this group draws the eye (captions mention salient objects).
    pub(crate) fn salience(self) -> f32 {
        match self {
            Super::Person => 3.0,
            Super::Animal => 2.6,
            Super::Vehicle => 2.0,
            Super::Food => 1.4,
            Super::Furniture => 0.9,
            Super::Thing => 0.8,
            Super::Clothing => 0.25,
            Super::Stuff | Super::Part => 0.1,
        }
    }
}

/// The kind of an attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AttrKind {
    Colour,
    Size,
    Material,
    State,
}

/// One object category. `words[0]` is the label (detector vocabulary, answers); the rest are
/// synonyms used by captions, phrases and questions.
#[derive(Debug)]
pub(crate) struct CategoryDef {
    pub(crate) words: &'static [&'static str],
    pub(crate) sup: Super,
    /// Typical box size as a fraction of the image (width, height) at full depth.
    pub(crate) size: (f32, f32),
}

macro_rules! cat {
    ($sup:ident, $w:expr, $h:expr, [$($word:expr),+]) => {
        CategoryDef { words: &[$($word),+], sup: Super::$sup, size: ($w, $h) }
    };
}

/// All categories in id order: things first (grouped by super-category), then stuff, then parts.
pub(crate) static CATEGORIES: &[CategoryDef] = &[
    // People.
    cat!(Person, 0.16, 0.55, ["man", "guy", "person", "gentleman"]),
    cat!(Person, 0.15, 0.52, ["woman", "lady", "person"]),
    cat!(Person, 0.12, 0.38, ["boy", "kid", "child"]),
    cat!(Person, 0.12, 0.37, ["girl", "kid", "child"]),
    cat!(Person, 0.10, 0.18, ["baby", "infant", "toddler"]),
    cat!(Person, 0.16, 0.52, ["player", "athlete"]),
    cat!(Person, 0.16, 0.50, ["skier", "person"]),
    cat!(Person, 0.16, 0.50, ["surfer", "person"]),
    // Animals.
    cat!(Animal, 0.24, 0.22, ["dog", "puppy", "pup"]),
    cat!(Animal, 0.18, 0.16, ["cat", "kitten", "kitty"]),
    cat!(Animal, 0.34, 0.38, ["horse", "pony"]),
    cat!(Animal, 0.34, 0.30, ["cow", "cattle"]),
    cat!(Animal, 0.24, 0.20, ["sheep", "lamb"]),
    cat!(Animal, 0.45, 0.48, ["elephant"]),
    cat!(Animal, 0.24, 0.62, ["giraffe"]),
    cat!(Animal, 0.32, 0.32, ["zebra"]),
    cat!(Animal, 0.10, 0.10, ["bird"]),
    cat!(Animal, 0.32, 0.32, ["bear"]),
    cat!(Animal, 0.12, 0.10, ["duck"]),
    cat!(Animal, 0.24, 0.22, ["goat"]),
    // Vehicles.
    cat!(Vehicle, 0.34, 0.22, ["car", "automobile"]),
    cat!(Vehicle, 0.55, 0.40, ["bus", "coach"]),
    cat!(Vehicle, 0.46, 0.34, ["truck", "lorry"]),
    cat!(Vehicle, 0.24, 0.20, ["bike", "bicycle"]),
    cat!(Vehicle, 0.26, 0.22, ["motorcycle", "motorbike"]),
    cat!(Vehicle, 0.70, 0.32, ["train", "locomotive"]),
    cat!(Vehicle, 0.40, 0.22, ["boat", "ship"]),
    cat!(Vehicle, 0.55, 0.25, ["airplane", "plane", "jet"]),
    cat!(Vehicle, 0.16, 0.06, ["skateboard"]),
    cat!(Vehicle, 0.30, 0.08, ["surfboard", "board"]),
    cat!(Vehicle, 0.40, 0.28, ["van", "minivan"]),
    // Furniture.
    cat!(Furniture, 0.18, 0.28, ["chair", "seat"]),
    cat!(Furniture, 0.50, 0.30, ["sofa", "couch"]),
    cat!(Furniture, 0.42, 0.24, ["table"]),
    cat!(Furniture, 0.55, 0.32, ["bed"]),
    cat!(Furniture, 0.45, 0.20, ["bench"]),
    cat!(Furniture, 0.40, 0.26, ["desk"]),
    cat!(Furniture, 0.30, 0.45, ["shelf", "bookshelf"]),
    cat!(Furniture, 0.30, 0.40, ["cabinet", "cupboard"]),
    cat!(Furniture, 0.10, 0.26, ["lamp"]),
    cat!(Furniture, 0.12, 0.20, ["stool"]),
    // Food.
    cat!(Food, 0.20, 0.10, ["pizza"]),
    cat!(Food, 0.14, 0.08, ["sandwich"]),
    cat!(Food, 0.10, 0.05, ["banana"]),
    cat!(Food, 0.06, 0.06, ["apple"]),
    cat!(Food, 0.06, 0.06, ["orange"]),
    cat!(Food, 0.16, 0.10, ["cake"]),
    cat!(Food, 0.07, 0.05, ["donut", "doughnut"]),
    cat!(Food, 0.12, 0.05, ["hot dog", "hotdog"]),
    cat!(Food, 0.08, 0.03, ["carrot"]),
    cat!(Food, 0.08, 0.07, ["broccoli"]),
    cat!(Food, 0.12, 0.06, ["bread", "loaf"]),
    cat!(Food, 0.14, 0.07, ["salad"]),
    cat!(Food, 0.05, 0.04, ["cookie", "biscuit"]),
    // Clothing.
    cat!(Clothing, 0.12, 0.18, ["shirt", "top"]),
    cat!(Clothing, 0.14, 0.22, ["jacket"]),
    cat!(Clothing, 0.08, 0.06, ["hat", "cap"]),
    cat!(Clothing, 0.13, 0.30, ["dress", "gown"]),
    cat!(Clothing, 0.11, 0.25, ["pants", "trousers", "jeans"]),
    cat!(Clothing, 0.05, 0.03, ["shoe", "sneaker"]),
    cat!(Clothing, 0.08, 0.06, ["helmet"]),
    cat!(Clothing, 0.03, 0.10, ["tie", "necktie"]),
    cat!(Clothing, 0.09, 0.04, ["scarf"]),
    cat!(Clothing, 0.06, 0.02, ["glasses", "sunglasses"]),
    cat!(Clothing, 0.14, 0.28, ["coat"]),
    // Things.
    cat!(Thing, 0.05, 0.07, ["cup", "mug"]),
    cat!(Thing, 0.04, 0.10, ["bottle"]),
    cat!(Thing, 0.12, 0.04, ["plate", "dish"]),
    cat!(Thing, 0.10, 0.05, ["bowl"]),
    cat!(Thing, 0.02, 0.08, ["fork"]),
    cat!(Thing, 0.02, 0.09, ["knife"]),
    cat!(Thing, 0.06, 0.12, ["vase"]),
    cat!(Thing, 0.07, 0.09, ["book", "novel"]),
    cat!(Thing, 0.04, 0.07, ["phone", "cellphone"]),
    cat!(Thing, 0.16, 0.12, ["laptop", "computer"]),
    cat!(Thing, 0.24, 0.18, ["umbrella", "parasol"]),
    cat!(Thing, 0.10, 0.10, ["bag", "handbag", "purse"]),
    cat!(Thing, 0.10, 0.10, ["kite"]),
    cat!(Thing, 0.04, 0.04, ["ball"]),
    cat!(Thing, 0.06, 0.03, ["frisbee", "disc"]),
    cat!(Thing, 0.07, 0.07, ["clock"]),
    cat!(Thing, 0.22, 0.16, ["television", "tv"]),
    cat!(Thing, 0.05, 0.14, ["racket", "racquet"]),
    // Background stuff.
    cat!(Stuff, 1.00, 0.35, ["sky"]),
    cat!(Stuff, 1.00, 0.35, ["grass", "lawn"]),
    cat!(Stuff, 1.00, 0.30, ["road", "street"]),
    cat!(Stuff, 0.50, 0.15, ["sidewalk", "pavement"]),
    cat!(Stuff, 1.00, 0.55, ["wall"]),
    cat!(Stuff, 1.00, 0.30, ["floor"]),
    cat!(Stuff, 1.00, 0.35, ["water", "ocean"]),
    cat!(Stuff, 1.00, 0.30, ["sand"]),
    cat!(Stuff, 1.00, 0.35, ["snow"]),
    cat!(Stuff, 0.30, 0.12, ["cloud"]),
    cat!(Stuff, 0.40, 0.55, ["building"]),
    cat!(Stuff, 0.30, 0.50, ["tree"]),
    cat!(Stuff, 0.50, 0.12, ["fence"]),
    cat!(Stuff, 0.08, 0.08, ["sign"]),
    cat!(Stuff, 0.03, 0.45, ["pole"]),
    // Parts.
    cat!(Part, 0.30, 0.18, ["head"]),
    cat!(Part, 0.25, 0.10, ["hand"]),
    cat!(Part, 0.20, 0.35, ["arm"]),
    cat!(Part, 0.18, 0.40, ["leg"]),
    cat!(Part, 0.30, 0.10, ["hair"]),
    cat!(Part, 0.28, 0.14, ["face"]),
    cat!(Part, 0.12, 0.10, ["ear"]),
    cat!(Part, 0.15, 0.25, ["tail"]),
    cat!(Part, 0.22, 0.30, ["wheel", "tire"]),
    cat!(Part, 0.20, 0.20, ["window"]),
    cat!(Part, 0.18, 0.35, ["door"]),
    cat!(Part, 0.60, 0.20, ["roof"]),
    cat!(Part, 0.20, 0.15, ["leaf", "leaves"]),
    cat!(Part, 0.40, 0.10, ["branch"]),
    cat!(Part, 0.20, 0.15, ["handle"]),
];

/// One attribute. Every attribute is a single word.
#[derive(Debug)]
pub(crate) struct AttributeDef {
    pub(crate) word: &'static str,
    pub(crate) kind: AttrKind,
}

macro_rules! attr {
    ($kind:ident, $word:expr) => {
        AttributeDef {
            word: $word,
            kind: AttrKind::$kind,
        }
    };
}

/// All attributes in id order.
pub(crate) static ATTRIBUTES: &[AttributeDef] = &[
    attr!(Colour, "white"),
    attr!(Colour, "black"),
    attr!(Colour, "red"),
    attr!(Colour, "blue"),
    attr!(Colour, "green"),
    attr!(Colour, "yellow"),
    attr!(Colour, "brown"),
    attr!(Colour, "gray"),
    attr!(Colour, "orange"),
    attr!(Colour, "pink"),
    attr!(Colour, "purple"),
    attr!(Colour, "silver"),
    attr!(Size, "small"),
    attr!(Size, "large"),
    attr!(Size, "tall"),
    attr!(Size, "short"),
    attr!(Size, "long"),
    attr!(Size, "tiny"),
    attr!(Material, "wooden"),
    attr!(Material, "metal"),
    attr!(Material, "plastic"),
    attr!(Material, "glass"),
    attr!(Material, "leather"),
    attr!(Material, "stone"),
    attr!(Material, "cotton"),
    attr!(Material, "wool"),
    attr!(State, "old"),
    attr!(State, "new"),
    attr!(State, "young"),
    attr!(State, "wet"),
    attr!(State, "dry"),
    attr!(State, "empty"),
    attr!(State, "full"),
    attr!(State, "dirty"),
    attr!(State, "clean"),
    attr!(State, "shiny"),
    attr!(State, "plaid"),
    attr!(State, "fresh"),
    attr!(State, "happy"),
    attr!(State, "fluffy"),
];

/// Attribute words a category of the given group may carry (before the preset's subset).
pub(crate) fn allowed_attribute_words(sup: Super, label: &str) -> &'static [&'static str] {
    match sup {
        Super::Person => &["young", "old", "tall", "short", "happy", "wet"],
        Super::Animal => match label {
            "giraffe" | "zebra" | "elephant" => &["large", "small", "tall", "young", "old", "wet"],
            _ => &[
                "white", "black", "brown", "gray", "small", "large", "young", "wet", "fluffy",
                "tiny",
            ],
        },
        Super::Vehicle => &[
            "white", "black", "red", "blue", "green", "yellow", "gray", "silver", "orange",
            "large", "small", "long", "old", "new", "dirty", "clean", "shiny", "metal",
        ],
        Super::Furniture => &[
            "white", "black", "brown", "red", "blue", "gray", "wooden", "metal", "plastic",
            "leather", "stone", "old", "new", "empty", "small", "large", "long", "clean",
        ],
        Super::Food => &[
            "red", "green", "yellow", "brown", "orange", "small", "large", "fresh", "tiny", "long",
        ],
        Super::Clothing => &[
            "white", "black", "red", "blue", "green", "yellow", "brown", "gray", "orange", "pink",
            "purple", "cotton", "wool", "leather", "plaid", "long", "short", "dirty", "clean",
            "new",
        ],
        Super::Thing => &[
            "white", "black", "red", "blue", "green", "yellow", "brown", "gray", "orange", "pink",
            "purple", "silver", "small", "large", "metal", "plastic", "glass", "wooden", "empty",
            "full", "old", "new", "shiny", "tiny",
        ],
        Super::Stuff => match label {
            "sky" => &["blue", "gray", "white", "clear"],
            "grass" => &["green", "brown", "dry", "tall", "short"],
            "water" => &["blue", "green", "calm"],
            "snow" => &["white", "fresh", "wet"],
            "cloud" => &["white", "gray", "fluffy"],
            "tree" => &["green", "tall", "large", "brown"],
            "building" => &["tall", "white", "brick", "old", "large", "red"],
            _ => &["gray", "brown", "white", "wet", "dry", "stone", "dirty"],
        },
        Super::Part => &[
            "black", "brown", "white", "long", "short", "small", "large", "round",
        ],
    }
}

/// Scene types: the setting a caption names, their background stuff and their thing pool.
#[derive(Debug)]
pub(crate) struct SceneTypeDef {
    pub(crate) place: &'static [&'static str],
    pub(crate) stuff: &'static [&'static str],
    /// (label, weight) of thing categories likely in this scene.
    pub(crate) things: &'static [(&'static str, f32)],
}

pub(crate) static SCENE_TYPES: &[SceneTypeDef] = &[
    SceneTypeDef {
        place: &["on a city street", "on the street", "in a city"],
        stuff: &[
            "road", "sidewalk", "building", "sky", "sign", "pole", "tree",
        ],
        things: &[
            ("man", 3.0),
            ("woman", 3.0),
            ("boy", 1.0),
            ("girl", 1.0),
            ("dog", 1.5),
            ("car", 3.0),
            ("bus", 2.0),
            ("truck", 1.5),
            ("bike", 2.0),
            ("motorcycle", 1.5),
            ("van", 1.0),
            ("bench", 1.0),
            ("umbrella", 1.0),
            ("bag", 1.0),
            ("phone", 0.8),
            ("skateboard", 0.8),
            ("bird", 0.5),
            ("clock", 0.4),
            ("hot dog", 0.4),
            ("cup", 0.4),
            ("horse", 0.4),
            ("player", 0.3),
            ("baby", 0.3),
            ("cat", 0.3),
        ],
    },
    SceneTypeDef {
        place: &["in a kitchen", "in the kitchen"],
        stuff: &["wall", "floor", "window"],
        things: &[
            ("man", 1.5),
            ("woman", 1.5),
            ("boy", 0.6),
            ("girl", 0.6),
            ("baby", 0.4),
            ("table", 2.0),
            ("chair", 1.5),
            ("cabinet", 1.5),
            ("stool", 0.8),
            ("cup", 1.5),
            ("bottle", 1.2),
            ("plate", 1.5),
            ("bowl", 1.2),
            ("fork", 0.8),
            ("knife", 0.8),
            ("vase", 0.5),
            ("pizza", 1.0),
            ("sandwich", 0.8),
            ("banana", 0.8),
            ("apple", 0.8),
            ("orange", 0.6),
            ("cake", 0.8),
            ("donut", 0.6),
            ("carrot", 0.5),
            ("broccoli", 0.5),
            ("bread", 0.6),
            ("salad", 0.5),
            ("cookie", 0.5),
            ("cat", 0.5),
            ("dog", 0.4),
            ("clock", 0.4),
            ("laptop", 0.4),
        ],
    },
    SceneTypeDef {
        place: &["in a living room", "in a room", "inside a house"],
        stuff: &["wall", "floor", "window"],
        things: &[
            ("man", 1.5),
            ("woman", 1.5),
            ("boy", 0.8),
            ("girl", 0.8),
            ("baby", 0.6),
            ("sofa", 2.0),
            ("chair", 1.5),
            ("table", 1.5),
            ("lamp", 1.2),
            ("shelf", 1.0),
            ("bed", 1.0),
            ("desk", 1.0),
            ("television", 1.5),
            ("laptop", 1.0),
            ("book", 1.2),
            ("vase", 0.8),
            ("clock", 0.8),
            ("cup", 0.8),
            ("phone", 0.8),
            ("cat", 1.5),
            ("dog", 1.5),
            ("bag", 0.5),
            ("pizza", 0.4),
            ("ball", 0.4),
            ("stool", 0.4),
        ],
    },
    SceneTypeDef {
        place: &["in a field", "in a park", "on the grass"],
        stuff: &["grass", "sky", "tree", "fence", "cloud"],
        things: &[
            ("man", 2.0),
            ("woman", 1.5),
            ("boy", 1.2),
            ("girl", 1.2),
            ("player", 1.5),
            ("dog", 2.0),
            ("horse", 1.5),
            ("cow", 1.5),
            ("sheep", 1.5),
            ("goat", 0.8),
            ("elephant", 1.0),
            ("giraffe", 1.0),
            ("zebra", 1.0),
            ("bird", 1.0),
            ("bear", 0.6),
            ("kite", 1.5),
            ("frisbee", 1.2),
            ("ball", 1.2),
            ("racket", 0.8),
            ("bench", 1.2),
            ("bike", 0.8),
            ("umbrella", 0.5),
            ("bag", 0.5),
            ("duck", 0.6),
        ],
    },
    SceneTypeDef {
        place: &["on a beach", "at the beach", "near the ocean"],
        stuff: &["sand", "water", "sky", "cloud"],
        things: &[
            ("man", 2.0),
            ("woman", 1.5),
            ("boy", 1.0),
            ("girl", 1.0),
            ("surfer", 2.0),
            ("surfboard", 2.0),
            ("boat", 1.5),
            ("umbrella", 1.5),
            ("kite", 1.5),
            ("dog", 1.2),
            ("bird", 1.2),
            ("frisbee", 0.8),
            ("ball", 0.8),
            ("bag", 0.6),
            ("horse", 0.5),
            ("chair", 0.8),
            ("bottle", 0.5),
            ("duck", 0.5),
        ],
    },
    SceneTypeDef {
        place: &["in the snow", "on a snowy hill", "on a ski slope"],
        stuff: &["snow", "sky", "tree", "pole"],
        things: &[
            ("skier", 3.0),
            ("man", 1.5),
            ("woman", 1.2),
            ("boy", 0.6),
            ("girl", 0.6),
            ("dog", 1.0),
            ("bear", 0.5),
            ("sign", 0.0),
            ("bench", 0.6),
            ("bag", 0.5),
            ("skateboard", 0.3),
            ("bird", 0.5),
            ("horse", 0.3),
        ],
    },
    SceneTypeDef {
        place: &["at a train station", "near the tracks", "at an airport"],
        stuff: &["sky", "building", "pole", "sign", "road"],
        things: &[
            ("train", 2.5),
            ("airplane", 2.0),
            ("man", 2.0),
            ("woman", 1.5),
            ("bus", 1.0),
            ("truck", 1.0),
            ("car", 1.0),
            ("bench", 1.0),
            ("bag", 1.0),
            ("clock", 0.8),
            ("bird", 0.6),
            ("bike", 0.5),
            ("phone", 0.6),
            ("cup", 0.4),
        ],
    },
];

/// The four action verbs between objects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Action {
    Riding,
    Holding,
    Wearing,
    Eating,
}

impl Action {
    pub(crate) const ALL: [Action; 4] = [
        Action::Riding,
        Action::Holding,
        Action::Wearing,
        Action::Eating,
    ];

    /// Progressive ("riding") and present ("rides") forms.
    pub(crate) fn forms(self) -> (&'static str, &'static str) {
        match self {
            Action::Riding => ("riding", "rides"),
            Action::Holding => ("holding", "holds"),
            Action::Wearing => ("wearing", "wears"),
            Action::Eating => ("eating", "eats"),
        }
    }

    /// Labels of the categories that can be the object of this action for a given subject.
    pub(crate) fn objects_for(self, subject: &str, sup: Super) -> &'static [&'static str] {
        match (self, sup) {
            (Action::Riding, Super::Person) => match subject {
                "surfer" => &["surfboard"],
                "baby" => &[],
                _ => &[
                    "horse",
                    "elephant",
                    "bike",
                    "motorcycle",
                    "skateboard",
                    "surfboard",
                    "boat",
                ],
            },
            (Action::Holding, Super::Person) => &[
                "cup", "bottle", "phone", "umbrella", "kite", "frisbee", "ball", "bag", "book",
                "racket", "banana", "donut", "apple", "sandwich", "hot dog",
            ],
            (Action::Holding, Super::Animal) => match subject {
                "dog" => &["frisbee", "ball"],
                _ => &[],
            },
            (Action::Wearing, Super::Person) => &[
                "shirt", "jacket", "hat", "dress", "pants", "shoe", "helmet", "tie", "scarf",
                "glasses", "coat",
            ],
            (Action::Eating, Super::Person) => &[
                "pizza", "sandwich", "banana", "apple", "orange", "cake", "donut", "hot dog",
                "carrot", "salad", "cookie",
            ],
            (Action::Eating, Super::Animal) => match subject {
                "bird" | "duck" => &["bread", "cookie"],
                "horse" | "goat" | "elephant" => &["carrot", "apple"],
                "dog" => &["hot dog", "sandwich"],
                _ => &[],
            },
            _ => &[],
        }
    }
}

/// Categories that other objects can stand on ("the cup on the table").
pub(crate) const SUPPORTS: &[&str] = &[
    "table", "desk", "bench", "bed", "sofa", "shelf", "chair", "plate", "stool", "cabinet",
];
/// Categories under which something can be ("the cat under the table").
pub(crate) const COVERS: &[&str] = &["table", "desk", "bench", "chair", "bed", "umbrella"];
/// Groups of things small enough to be on a support.
pub(crate) fn can_be_on(sup: Super, label: &str) -> bool {
    matches!(sup, Super::Food | Super::Thing)
        && !matches!(label, "umbrella" | "kite" | "television")
        || matches!(label, "cat" | "dog" | "baby" | "bird")
}
/// Things that fit under a cover.
pub(crate) fn can_be_under(sup: Super, label: &str) -> bool {
    matches!(
        label,
        "cat" | "dog" | "ball" | "bag" | "baby" | "duck" | "bird" | "book"
    ) || (sup == Super::Person && label != "baby")
}

/// Which part categories a thing shows (filler regions).
pub(crate) fn parts_of(sup: Super, label: &str) -> &'static [&'static str] {
    match sup {
        Super::Person => &["head", "hand", "arm", "leg", "hair", "face"],
        Super::Animal => match label {
            "bird" | "duck" => &["head", "tail"],
            _ => &["head", "leg", "tail", "ear"],
        },
        Super::Vehicle => match label {
            "skateboard" | "surfboard" | "boat" => &[],
            "bike" | "motorcycle" => &["wheel", "handle"],
            _ => &["wheel", "window", "door"],
        },
        Super::Furniture => &["leg"],
        Super::Thing => match label {
            "cup" | "bag" | "umbrella" | "racket" | "knife" | "fork" => &["handle"],
            _ => &[],
        },
        Super::Stuff => match label {
            "building" => &["window", "door", "roof"],
            "tree" => &["leaf", "branch"],
            _ => &[],
        },
        _ => &[],
    }
}

/// Plural of a (possibly multi-word) noun.
pub(crate) fn plural(noun: &str) -> String {
    if let Some((head, last)) = noun.rsplit_once(' ') {
        return format!("{head} {}", plural(last));
    }
    let irregular = match noun {
        "man" => "men",
        "woman" => "women",
        "gentleman" => "gentlemen",
        "child" => "children",
        "person" => "people",
        "sheep" | "cattle" | "glasses" | "sunglasses" | "pants" | "trousers" | "jeans"
        | "broccoli" | "bread" | "leaves" | "grass" | "sand" | "snow" | "water" | "hair" => noun,
        "knife" => "knives",
        "shelf" => "shelves",
        "bookshelf" => "bookshelves",
        "leaf" => "leaves",
        "kitty" => "kitties",
        "puppy" => "puppies",
        "baby" => "babies",
        "lorry" => "lorries",
        "sky" => "skies",
        "bus" => "buses",
        _ => "",
    };
    if !irregular.is_empty() {
        return irregular.to_string();
    }
    if noun.ends_with("ch") || noun.ends_with("sh") || noun.ends_with('s') || noun.ends_with('x') {
        format!("{noun}es")
    } else {
        format!("{noun}s")
    }
}

/// Number words used in text ("two dogs"); answers use digits (VQA normalisation).
pub(crate) const NUMBER_WORDS: &[&str] = &[
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
];

/// The subset of the lexicon a preset uses, with dense ids.
#[derive(Debug, Clone)]
pub(crate) struct Lexicon {
    /// Indices into [`CATEGORIES`] of the categories in use, in label-id order.
    pub(crate) cats: Vec<usize>,
    /// Indices into [`ATTRIBUTES`] in attribute-id order.
    pub(crate) attrs: Vec<usize>,
    /// Per category id: allowed attribute ids.
    pub(crate) allowed: Vec<Vec<usize>>,
}

impl Lexicon {
    /// Uses the first `things` thing categories taken round-robin over the super-categories
    /// (so every group keeps members), all stuff and parts, and the first `attributes`
    /// attributes taken round-robin over the four kinds.
    pub(crate) fn new(things: usize, attributes: usize) -> Lexicon {
        let thing_groups = Super::THINGS;
        let mut chosen = vec![false; CATEGORIES.len()];
        let mut per_group: Vec<Vec<usize>> = thing_groups
            .iter()
            .map(|g| {
                (0..CATEGORIES.len())
                    .filter(|&i| CATEGORIES[i].sup == *g)
                    .collect()
            })
            .collect();
        per_group.iter_mut().for_each(|v| v.reverse());
        let mut taken = 0;
        while taken < things && per_group.iter().any(|v| !v.is_empty()) {
            for group in per_group.iter_mut() {
                if taken < things {
                    if let Some(i) = group.pop() {
                        chosen[i] = true;
                        taken += 1;
                    }
                }
            }
        }
        for (i, c) in CATEGORIES.iter().enumerate() {
            if matches!(c.sup, Super::Stuff | Super::Part) {
                chosen[i] = true;
            }
        }
        let cats: Vec<usize> = (0..CATEGORIES.len()).filter(|&i| chosen[i]).collect();

        let kinds = [
            AttrKind::Colour,
            AttrKind::Size,
            AttrKind::Material,
            AttrKind::State,
        ];
        let mut per_kind: Vec<Vec<usize>> = kinds
            .iter()
            .map(|k| {
                (0..ATTRIBUTES.len())
                    .filter(|&i| ATTRIBUTES[i].kind == *k)
                    .rev()
                    .collect()
            })
            .collect();
        let mut achosen = vec![false; ATTRIBUTES.len()];
        let mut taken = 0;
        while taken < attributes && per_kind.iter().any(|v| !v.is_empty()) {
            for kind in per_kind.iter_mut() {
                if taken < attributes {
                    if let Some(i) = kind.pop() {
                        achosen[i] = true;
                        taken += 1;
                    }
                }
            }
        }
        let attrs: Vec<usize> = (0..ATTRIBUTES.len()).filter(|&i| achosen[i]).collect();
        let allowed = cats
            .iter()
            .map(|&ci| {
                let c = &CATEGORIES[ci];
                allowed_attribute_words(c.sup, c.words[0])
                    .iter()
                    .filter_map(|w| attrs.iter().position(|&ai| ATTRIBUTES[ai].word == *w))
                    .collect()
            })
            .collect();
        Lexicon {
            cats,
            attrs,
            allowed,
        }
    }

    pub(crate) fn num_categories(&self) -> usize {
        self.cats.len()
    }
    pub(crate) fn num_attributes(&self) -> usize {
        self.attrs.len()
    }
    pub(crate) fn cat(&self, id: usize) -> &'static CategoryDef {
        &CATEGORIES[self.cats[id]]
    }
    pub(crate) fn label(&self, id: usize) -> &'static str {
        self.cat(id).words[0]
    }
    pub(crate) fn attr(&self, id: usize) -> &'static AttributeDef {
        &ATTRIBUTES[self.attrs[id]]
    }
    pub(crate) fn attr_word(&self, id: usize) -> &'static str {
        self.attr(id).word
    }
    /// Category id of a label, if the preset uses it.
    pub(crate) fn cat_id(&self, label: &str) -> Option<usize> {
        self.cats
            .iter()
            .position(|&ci| CATEGORIES[ci].words[0] == label)
    }
    /// Ids of the categories in the same super-category (confusable labels), excluding `id`.
    pub(crate) fn confusable(&self, id: usize) -> Vec<usize> {
        let sup = self.cat(id).sup;
        (0..self.cats.len())
            .filter(|&j| j != id && self.cat(j).sup == sup)
            .collect()
    }
}
