//! Turning a record's bytes into trades: JSON in Finnhub's shape or a flat
//! shape, with configurable field names.
//!
//! A record either decodes whole or fails whole, with a reason meant for
//! the dead-letter topic's header: a Finnhub message carrying one bad trade
//! among ten goes to the dead-letter topic as it came, so nothing is lost
//! and nothing is half-applied. Messages that carry no trades on purpose
//! (Finnhub's `{"type":"ping"}`) decode to nothing, without error.
//!
//! | shape | example |
//! | --- | --- |
//! | flat | `{"symbol":"AAPL","ts":1700000000000,"price":189.5,"size":100}` |
//! | Finnhub | `{"type":"trade","data":[{"s":"AAPL","p":189.5,"t":1700000000000,"v":100}]}` |

use serde::Deserialize;
use serde_json::{Map, Value};

/// Which JSON shape records have.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// One trade per record, an object with the four fields.
    #[default]
    Flat,
    /// Finnhub's websocket messages: `type` and a `data` array of trades.
    Finnhub,
}

/// The names of a trade's fields in the JSON.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FieldNames {
    /// The key (symbol).
    pub symbol: String,
    /// Event time, integer milliseconds since the Unix epoch.
    pub ts: String,
    /// Price.
    pub price: String,
    /// Size (volume).
    pub size: String,
}

impl FieldNames {
    /// The names each shape uses unless configured otherwise.
    pub fn default_for(shape: Shape) -> Self {
        let names = match shape {
            Shape::Flat => ["symbol", "ts", "price", "size"],
            Shape::Finnhub => ["s", "t", "p", "v"],
        };
        let [symbol, ts, price, size] = names.map(String::from);
        FieldNames { symbol, ts, price, size }
    }
}

/// One decoded trade.
#[derive(Clone, Debug, PartialEq)]
pub struct Trade {
    /// The key (inline up to 24 bytes: decoding allocates nothing).
    pub symbol: compact_str::CompactString,
    /// Event time, ms since the Unix epoch, UTC.
    pub ts: i64,
    /// Price: finite.
    pub price: f64,
    /// Size: finite and not negative.
    pub size: f64,
}

/// Why a record could not be decoded: the text of the dead-letter header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all.
    #[error("not JSON: {0}")]
    NotJson(String),
    /// JSON, but not an object.
    #[error("expected a JSON object, got {0}")]
    NotAnObject(&'static str),
    /// A Finnhub message of type `trade` without a `data` array.
    #[error("a Finnhub trade message needs a `data` array")]
    NoData,
    /// A field is missing.
    #[error("{at}missing field `{field}`")]
    Missing { at: String, field: String },
    /// A field has the wrong type or an impossible value.
    #[error("{at}field `{field}` must be {expected}, got {got}")]
    Invalid { at: String, field: String, expected: &'static str, got: String },
}

/// Decodes JSON trades of one shape, with the given field names.
#[derive(Clone, Debug)]
pub struct Decoder {
    shape: Shape,
    names: FieldNames,
}

impl Decoder {
    /// A decoder for `shape`, with its default field names unless `names`.
    pub fn new(shape: Shape, names: Option<FieldNames>) -> Self {
        Decoder { shape, names: names.unwrap_or_else(|| FieldNames::default_for(shape)) }
    }

    /// Decodes one record, appending its trades to `out` only if all of
    /// them decode. Returns how many it appended.
    pub fn decode(&self, bytes: &[u8], out: &mut Vec<Trade>) -> Result<usize, DecodeError> {
        if self.shape == Shape::Flat
            && let Some(trade) = fast::flat(bytes, &self.names)
        {
            out.push(trade);
            return Ok(1);
        }
        self.decode_tree(bytes, out)
    }

    /// The plain path: the record as a JSON tree, every check spelled out
    /// (and every error message made here).
    fn decode_tree(&self, bytes: &[u8], out: &mut Vec<Trade>) -> Result<usize, DecodeError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| DecodeError::NotJson(e.to_string()))?;
        let Value::Object(obj) = value else { return Err(DecodeError::NotAnObject(kind(&value))) };
        match self.shape {
            Shape::Flat => {
                out.push(self.trade(&obj, "")?);
                Ok(1)
            }
            Shape::Finnhub => {
                // Pings and other message types carry no trades.
                if obj.get("type").and_then(Value::as_str) != Some("trade") {
                    return Ok(0);
                }
                let Some(Value::Array(data)) = obj.get("data") else { return Err(DecodeError::NoData) };
                let mut trades = Vec::with_capacity(data.len());
                for (i, item) in data.iter().enumerate() {
                    let at = format!("data[{i}]: ");
                    let Value::Object(t) = item else {
                        return Err(DecodeError::Invalid {
                            at,
                            field: "data".into(),
                            expected: "an array of objects",
                            got: kind(item).into(),
                        });
                    };
                    trades.push(self.trade(t, &at)?);
                }
                out.append(&mut trades);
                Ok(data.len())
            }
        }
    }

    fn trade(&self, obj: &Map<String, Value>, at: &str) -> Result<Trade, DecodeError> {
        let n = &self.names;
        let field = |name: &str| {
            obj.get(name).ok_or_else(|| DecodeError::Missing { at: at.to_string(), field: name.to_string() })
        };
        let invalid = |name: &str, expected: &'static str, got: &Value| DecodeError::Invalid {
            at: at.to_string(),
            field: name.to_string(),
            expected,
            got: got.to_string(),
        };
        let symbol = field(&n.symbol)?;
        let symbol = match symbol.as_str() {
            Some(s) if !s.is_empty() => s.into(),
            _ => return Err(invalid(&n.symbol, "a non-empty string", symbol)),
        };
        let ts = field(&n.ts)?;
        let ts = ts.as_i64().ok_or_else(|| invalid(&n.ts, "integer milliseconds since the Unix epoch", ts))?;
        let price = field(&n.price)?;
        let price =
            price.as_f64().filter(|p| p.is_finite()).ok_or_else(|| invalid(&n.price, "a finite number", price))?;
        let size = field(&n.size)?;
        let size = size
            .as_f64()
            .filter(|s| s.is_finite() && *s >= 0.0)
            .ok_or_else(|| invalid(&n.size, "a number, 0 or more", size))?;
        Ok(Trade { symbol, ts, price, size })
    }
}

/// The fast path for flat records: the four fields read straight from the
/// bytes, without a JSON tree (a tree costs a map and a string per key).
/// It answers only for a record that is entirely good; anything else goes
/// to the plain path, which says what is wrong.
mod fast {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

    use super::{FieldNames, Trade};

    pub fn flat(bytes: &[u8], names: &FieldNames) -> Option<Trade> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let trade = Fields(names).deserialize(&mut de).ok()??;
        de.end().ok()?;
        Some(trade)
    }

    struct Fields<'n>(&'n FieldNames);

    impl<'de> DeserializeSeed<'de> for Fields<'_> {
        type Value = Option<Trade>;

        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }

    impl<'de> Visitor<'de> for Fields<'_> {
        type Value = Option<Trade>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a trade object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let n = self.0;
            let (mut symbol, mut ts, mut price, mut size) = (None, None, None, None);
            // As in the tree (a map), a repeated key's last value counts.
            while let Some(Str(key)) = map.next_key::<Str>()? {
                if key == n.symbol {
                    symbol = Some(map.next_value::<Str>()?.0);
                } else if key == n.ts {
                    ts = Some(map.next_value::<i64>()?);
                } else if key == n.price {
                    price = Some(map.next_value::<f64>()?);
                } else if key == n.size {
                    size = Some(map.next_value::<f64>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            let (Some(symbol), Some(ts), Some(price), Some(size)) = (symbol, ts, price, size) else {
                return Ok(None);
            };
            let good = !symbol.is_empty() && price.is_finite() && size.is_finite() && size >= 0.0;
            Ok(good.then(|| Trade { symbol: compact_str::CompactString::from(symbol.as_ref()), ts, price, size }))
        }
    }

    /// A string, borrowed from the record when it has no escapes.
    struct Str<'de>(Cow<'de, str>);

    impl<'de> serde::Deserialize<'de> for Str<'de> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Str<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Str<'de>, E> {
                    Ok(Str(Cow::Borrowed(v)))
                }
                fn visit_str<E>(self, v: &str) -> Result<Str<'de>, E> {
                    Ok(Str(Cow::Owned(v.to_string())))
                }
            }
            d.deserialize_str(V)
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(shape: Shape, text: &str) -> Result<Vec<Trade>, DecodeError> {
        let mut out = Vec::new();
        Decoder::new(shape, None).decode(text.as_bytes(), &mut out).map(|_| out)
    }

    fn trade(symbol: &str, ts: i64, price: f64, size: f64) -> Trade {
        Trade { symbol: symbol.into(), ts, price, size }
    }

    #[test]
    fn flat_trades_decode_exactly() {
        let got = decode(Shape::Flat, r#"{"symbol":"AAPL","ts":1700000000123,"price":189.51000000000002,"size":100}"#);
        assert_eq!(got, Ok(vec![trade("AAPL", 1_700_000_000_123, 189.51000000000002, 100.0)]));
    }

    #[test]
    fn finnhub_messages_carry_several_trades_and_pings_none() {
        let msg = r#"{"data":[{"c":null,"p":7296.89,"s":"BINANCE:BTCUSDT","t":1575526691134,"v":0.011467},
                              {"p":7296.9,"s":"BINANCE:BTCUSDT","t":1575526691135,"v":1}],"type":"trade"}"#;
        assert_eq!(
            decode(Shape::Finnhub, msg),
            Ok(vec![
                trade("BINANCE:BTCUSDT", 1_575_526_691_134, 7296.89, 0.011467),
                trade("BINANCE:BTCUSDT", 1_575_526_691_135, 7296.9, 1.0)
            ])
        );
        assert_eq!(decode(Shape::Finnhub, r#"{"type":"ping"}"#), Ok(vec![]));
    }

    #[test]
    fn a_bad_trade_fails_the_whole_record_with_a_reason() {
        let mut out = vec![trade("KEEP", 1, 1.0, 1.0)];
        let msg = r#"{"type":"trade","data":[{"s":"A","p":1,"t":1,"v":1},{"s":"B","p":"1.5","t":2,"v":1}]}"#;
        let err = Decoder::new(Shape::Finnhub, None).decode(msg.as_bytes(), &mut out).unwrap_err();
        assert_eq!(err.to_string(), r#"data[1]: field `p` must be a finite number, got "1.5""#);
        assert_eq!(out.len(), 1, "nothing of a failed record is appended");
    }

    #[test]
    fn every_kind_of_bad_record_says_what_is_wrong() {
        let cases = [
            (Shape::Flat, "not json", "not JSON: expected ident at line 1 column 2"),
            (Shape::Flat, "[1,2]", "expected a JSON object, got an array"),
            (Shape::Flat, r#"{"symbol":"A","ts":1,"price":1}"#, "missing field `size`"),
            (
                Shape::Flat,
                r#"{"symbol":"","ts":1,"price":1,"size":1}"#,
                r#"field `symbol` must be a non-empty string, got """#,
            ),
            (
                Shape::Flat,
                r#"{"symbol":"A","ts":1.5,"price":1,"size":1}"#,
                "field `ts` must be integer milliseconds since the Unix epoch, got 1.5",
            ),
            (
                Shape::Flat,
                r#"{"symbol":"A","ts":1,"price":1,"size":-2}"#,
                "field `size` must be a number, 0 or more, got -2",
            ),
            (Shape::Finnhub, r#"{"type":"trade"}"#, "a Finnhub trade message needs a `data` array"),
        ];
        for (shape, text, reason) in cases {
            assert_eq!(decode(shape, text).unwrap_err().to_string(), reason, "{text}");
        }
    }

    /// The fast path for flat records against the plain one, on seeded
    /// records good and bad: whenever it answers, it answers what the plain
    /// path does, and it answers for every good record without a repeated
    /// key (one whose repeated key had a bad value first goes the plain way).
    #[test]
    fn the_fast_flat_path_agrees_with_the_tree() {
        let names = FieldNames::default_for(Shape::Flat);
        let decoder = Decoder::new(Shape::Flat, None);
        let mut rng = crate::synthetic::Rng::new(5);
        let pick = |rng: &mut crate::synthetic::Rng, items: &[&str]| {
            items[rng.range(0, items.len() as i64) as usize].to_string()
        };
        let symbols = [r#""AAPL""#, r#""BTC-USD""#, r#""A\u0042C""#, r#""\"q\"""#, r#""""#, "7", "null"];
        let times = ["1700000000123", "-5", "1.5", "9223372036854775807", "9223372036854775808", r#""1""#, "0"];
        let prices = [
            "189.51000000000002",
            "1e-300",
            "-0.0",
            "100",
            "1e400",
            r#""1.5""#,
            "true",
            "5e-324",
            "0.1",
            "9007199254740993",
            "2.2250738585072011e-308",
            "1.7976931348623157e308",
            "123456.78901234567890123456789",
            "7.0e+2",
            "-1E-7",
            "[1]",
        ];
        let sizes =
            ["100", "0", "-0.0", "-2", "0.5", "null", "1E3", "0.30000000000000004", "2.5e-5", "1e309", "1e-400"];
        let (mut fast_answers, mut good) = (0, 0);
        for _ in 0..20_000 {
            let mut fields = [
                format!(r#""symbol":{}"#, pick(&mut rng, &symbols)),
                format!(r#""ts":{}"#, pick(&mut rng, &times)),
                format!(r#""price":{}"#, pick(&mut rng, &prices)),
                format!(r#""size":{}"#, pick(&mut rng, &sizes)),
                r#""exchange":{"id":[1,2,{"x":null}]}"#.to_string(),
                r#""price":3.25"#.to_string(),
            ];
            // Shuffle, and sometimes leave a field out or repeat one.
            for i in (1..fields.len()).rev() {
                fields.swap(i, rng.range(0, i as i64 + 1) as usize);
            }
            let keep = rng.range(3, fields.len() as i64 + 1) as usize;
            let repeated = fields[..keep].iter().filter(|f| f.starts_with(r#""price""#)).count() > 1;
            let mut text = format!("{{{}}}", fields[..keep].join(","));
            if rng.unit() < 0.05 {
                text.push_str(" x");
            }
            let fast = fast::flat(text.as_bytes(), &names);
            let mut tree = Vec::new();
            let plain = decoder.decode_tree(text.as_bytes(), &mut tree);
            if let Some(t) = &fast {
                fast_answers += 1;
                assert_eq!(plain, Ok(1), "{text}");
                assert_eq!(&tree[0], t, "{text}");
                assert_eq!(t.price.to_bits(), tree[0].price.to_bits(), "{text}");
                assert_eq!(t.size.to_bits(), tree[0].size.to_bits(), "{text}");
            }
            if plain.is_ok() && !repeated {
                good += 1;
                assert!(fast.is_some(), "the fast path gave up on a good record: {text}");
            }
            let mut both = Vec::new();
            assert_eq!(decoder.decode(text.as_bytes(), &mut both), plain, "{text}");
            assert_eq!(both, tree, "{text}");
        }
        assert!(good > 300 && fast_answers >= good, "{good} good records, {fast_answers} fast answers");
    }

    #[test]
    fn field_names_are_configurable() {
        let names = FieldNames { symbol: "sym".into(), ts: "time".into(), price: "px".into(), size: "qty".into() };
        let mut out = Vec::new();
        Decoder::new(Shape::Flat, Some(names))
            .decode(br#"{"sym":"EURUSD","time":5,"px":1.0834,"qty":1000000}"#, &mut out)
            .unwrap();
        assert_eq!(out, vec![trade("EURUSD", 5, 1.0834, 1_000_000.0)]);
    }
}
