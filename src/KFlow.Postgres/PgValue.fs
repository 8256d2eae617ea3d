// The column types the sink writes and how a .NET value becomes a binary COPY field of such a column:
// nulls and options, JSON elements read by the column's type, UTC rules for timestamptz, JSON text.
namespace KFlow.Postgres

open System
open System.Globalization
open System.Text.Json
open System.Text.Json.Nodes
open Npgsql
open NpgsqlTypes

/// A scalar PostgreSQL type the sink can write (alone or as the element of an array column).
[<RequireQualifiedAccess>]
type PgScalar =
    /// text, varchar, char: string.
    | Text
    /// smallint: int16 (or any integer that fits; converted, OverflowException if it does not).
    | Int2
    /// integer: int32 (or any integer that fits).
    | Int4
    /// bigint: int64 (or any integer that fits).
    | Int8
    /// numeric: decimal (or an integer or float, converted).
    | Numeric
    /// real: float32.
    | Float4
    /// double precision: float (or an integer or float32, converted).
    | Float8
    /// boolean: bool.
    | Bool
    /// timestamp without time zone: DateTime (Kind Unspecified or Local).
    | Timestamp
    /// timestamp with time zone: DateTime (Kind Utc or Local) or DateTimeOffset; written as UTC.
    | TimestampTz
    /// date: DateOnly or DateTime.
    | Date
    /// uuid: Guid.
    | Uuid
    /// jsonb: a JSON text (string), JsonElement, JsonDocument, JsonNode, or any value serialized with
    /// System.Text.Json.
    | Jsonb
    /// json: as jsonb.
    | Json
    /// bytea: byte[].
    | Bytea

/// A column type the sink writes: a scalar or a one-dimensional array of one.
type PgType = {
    /// The type as PostgreSQL names it, e.g. "integer[]" (for messages).
    Name: string
    /// The scalar type, or the element type of an array.
    Scalar: PgScalar
    /// Whether the column is an array of Scalar.
    IsArray: bool
}

/// Recognising column types from the catalog and writing values of them.
[<RequireQualifiedAccess>]
module PgValue =

    let private scalarOfTypname =
        function
        | "text"
        | "varchar"
        | "bpchar" -> Some PgScalar.Text
        | "int2" -> Some PgScalar.Int2
        | "int4" -> Some PgScalar.Int4
        | "int8" -> Some PgScalar.Int8
        | "numeric" -> Some PgScalar.Numeric
        | "float4" -> Some PgScalar.Float4
        | "float8" -> Some PgScalar.Float8
        | "bool" -> Some PgScalar.Bool
        | "timestamp" -> Some PgScalar.Timestamp
        | "timestamptz" -> Some PgScalar.TimestampTz
        | "date" -> Some PgScalar.Date
        | "uuid" -> Some PgScalar.Uuid
        | "jsonb" -> Some PgScalar.Jsonb
        | "json" -> Some PgScalar.Json
        | "bytea" -> Some PgScalar.Bytea
        | _ -> None

    /// The names of the supported types, for messages.
    let supportedTypes =
        "text, varchar, char, smallint, integer, bigint, numeric, real, double precision, boolean, \
         timestamp, timestamptz, date, uuid, jsonb, json, bytea, and one-dimensional arrays of these"

    /// <summary>The column type for a catalog entry, or None if the sink cannot write it.</summary>
    /// <param name="typname">pg_type.typname of the column's type (e.g. int4, _int4).</param>
    /// <param name="elementTypname">pg_type.typname of the element type for an array; null otherwise.</param>
    /// <param name="name">format_type of the column's type, e.g. "integer[]".</param>
    let tryType (typname: string) (elementTypname: string) (name: string) : PgType option =
        if isNull elementTypname then
            scalarOfTypname typname
            |> Option.map (fun scalar -> {
                Name = name
                Scalar = scalar
                IsArray = false
            })
        else
            scalarOfTypname elementTypname
            |> Option.map (fun scalar -> {
                Name = name
                Scalar = scalar
                IsArray = true
            })

    let private scalarDbType =
        function
        | PgScalar.Text -> NpgsqlDbType.Text
        | PgScalar.Int2 -> NpgsqlDbType.Smallint
        | PgScalar.Int4 -> NpgsqlDbType.Integer
        | PgScalar.Int8 -> NpgsqlDbType.Bigint
        | PgScalar.Numeric -> NpgsqlDbType.Numeric
        | PgScalar.Float4 -> NpgsqlDbType.Real
        | PgScalar.Float8 -> NpgsqlDbType.Double
        | PgScalar.Bool -> NpgsqlDbType.Boolean
        | PgScalar.Timestamp -> NpgsqlDbType.Timestamp
        | PgScalar.TimestampTz -> NpgsqlDbType.TimestampTz
        | PgScalar.Date -> NpgsqlDbType.Date
        | PgScalar.Uuid -> NpgsqlDbType.Uuid
        | PgScalar.Jsonb -> NpgsqlDbType.Jsonb
        | PgScalar.Json -> NpgsqlDbType.Json
        | PgScalar.Bytea -> NpgsqlDbType.Bytea

    /// The Npgsql type a value of this column is written as.
    let dbType (pgType: PgType) =
        if pgType.IsArray then
            NpgsqlDbType.Array ||| scalarDbType pgType.Scalar
        else
            scalarDbType pgType.Scalar

    /// The .NET type of a normalized scalar value (array elements are built with it).
    let private clrType =
        function
        | PgScalar.Text
        | PgScalar.Jsonb
        | PgScalar.Json -> typeof<string>
        | PgScalar.Int2 -> typeof<int16>
        | PgScalar.Int4 -> typeof<int>
        | PgScalar.Int8 -> typeof<int64>
        | PgScalar.Numeric -> typeof<decimal>
        | PgScalar.Float4 -> typeof<float32>
        | PgScalar.Float8 -> typeof<float>
        | PgScalar.Bool -> typeof<bool>
        | PgScalar.Timestamp
        | PgScalar.TimestampTz -> typeof<DateTime>
        | PgScalar.Date -> typeof<DateOnly>
        | PgScalar.Uuid -> typeof<Guid>
        | PgScalar.Bytea -> typeof<byte[]>

    let private cannot (scalar: PgScalar) (what: string) =
        raise (InvalidCastException($"{what} cannot be written to a {scalar} column."))

    /// A JSON element read as the scalar type (JSON null gives null).
    let private ofJson (scalar: PgScalar) (json: JsonElement) : obj =
        match json.ValueKind, scalar with
        | JsonValueKind.Null, _
        | JsonValueKind.Undefined, _ -> null
        | _, PgScalar.Jsonb
        | _, PgScalar.Json -> box (json.GetRawText())
        | JsonValueKind.String, PgScalar.Text -> box (json.GetString())
        | _, PgScalar.Text -> box (json.GetRawText())
        | JsonValueKind.Number, PgScalar.Int2 -> box (json.GetInt16())
        | JsonValueKind.Number, PgScalar.Int4 -> box (json.GetInt32())
        | JsonValueKind.Number, PgScalar.Int8 -> box (json.GetInt64())
        | JsonValueKind.Number, PgScalar.Numeric -> box (json.GetDecimal())
        | JsonValueKind.Number, PgScalar.Float4 -> box (json.GetSingle())
        | JsonValueKind.Number, PgScalar.Float8 -> box (json.GetDouble())
        | JsonValueKind.True, PgScalar.Bool -> box true
        | JsonValueKind.False, PgScalar.Bool -> box false
        | JsonValueKind.String, PgScalar.Timestamp ->
            // The wall-clock time as written; an offset, if any, is ignored.
            let value = DateTimeOffset.Parse(json.GetString(), CultureInfo.InvariantCulture)
            box value.DateTime
        | JsonValueKind.String, PgScalar.TimestampTz ->
            let value =
                DateTimeOffset.Parse(
                    json.GetString(),
                    CultureInfo.InvariantCulture,
                    DateTimeStyles.AssumeUniversal
                )

            box value.UtcDateTime
        | JsonValueKind.String, PgScalar.Date ->
            box (DateOnly.Parse(json.GetString(), CultureInfo.InvariantCulture))
        | JsonValueKind.String, PgScalar.Uuid -> box (json.GetGuid())
        | JsonValueKind.String, PgScalar.Bytea -> box (json.GetBytesFromBase64())
        | kind, _ -> cannot scalar $"A JSON {kind}"

    /// Unwraps F# options: None is null, Some x is x.
    let private unwrapOption (value: obj) =
        let t = value.GetType()

        if t.IsGenericType then
            let definition = t.GetGenericTypeDefinition()

            if definition = typedefof<option<_>> then
                t.GetProperty("Value").GetValue value
            elif definition = typedefof<voption<_>> then
                if (t.GetProperty("IsSome").GetValue value :?> bool) then
                    t.GetProperty("Value").GetValue value
                else
                    null
            else
                value
        else
            value

    /// The value itself, or null for SQL NULL (null, DBNull, None, ValueNone); Some x is x.
    let private present (value: obj) : obj =
        match value with
        | null -> null
        | :? DBNull -> null
        | _ -> unwrapOption value

    /// A JSON text for a json/jsonb column.
    let private jsonText (value: obj) : obj =
        match value with
        | :? string -> value
        | :? JsonElement as element -> box (element.GetRawText())
        | :? JsonDocument as document -> box (document.RootElement.GetRawText())
        | :? JsonNode as node -> box (node.ToJsonString())
        | other -> box (JsonSerializer.Serialize other)

    /// Matches the .NET integer types.
    let private (|Integral|_|) (value: obj) =
        match value with
        | :? int16
        | :? int
        | :? int64
        | :? byte
        | :? sbyte
        | :? uint16
        | :? uint32
        | :? uint64 -> Some()
        | _ -> None

    /// A scalar value in the form Npgsql writes for the column (null stays null).
    let private normalizeScalar (scalar: PgScalar) (value: obj) : obj =
        match present value with
        | null -> null
        | :? JsonElement as json -> ofJson scalar json
        | value ->
            match scalar, value with
            | (PgScalar.Jsonb | PgScalar.Json), _ -> jsonText value
            | PgScalar.Int2, (:? int16) -> value
            | PgScalar.Int4, (:? int) -> value
            | PgScalar.Int8, (:? int64) -> value
            | PgScalar.Numeric, (:? decimal) -> value
            | PgScalar.Float8, (:? float) -> value
            | PgScalar.Int2, Integral -> box (Convert.ToInt16 value)
            | PgScalar.Int4, Integral -> box (Convert.ToInt32 value)
            | PgScalar.Int8, Integral -> box (Convert.ToInt64 value)
            | PgScalar.Numeric, (Integral | :? float | :? float32) -> box (Convert.ToDecimal value)
            | PgScalar.Float8, (Integral | :? float32) -> box (Convert.ToDouble value)
            | PgScalar.TimestampTz, (:? DateTimeOffset as instant) -> box instant.UtcDateTime
            | PgScalar.TimestampTz, (:? DateTime as time) when time.Kind = DateTimeKind.Local ->
                box (time.ToUniversalTime())
            | PgScalar.Date, (:? DateTime as time) -> box (DateOnly.FromDateTime time)
            | _ -> value

    /// An array value from a JSON array: a typed .NET array (of nullables where an element is null).
    let private arrayOfJson (scalar: PgScalar) (json: JsonElement) : obj =
        if json.ValueKind <> JsonValueKind.Array then
            cannot scalar $"A JSON {json.ValueKind} (not an array)"

        let elements = [| for element in json.EnumerateArray() -> ofJson scalar element |]
        let elementType = clrType scalar

        let arrayType =
            if elementType.IsValueType && Array.exists isNull elements then
                typedefof<Nullable<_>>.MakeGenericType elementType
            else
                elementType

        let array = Array.CreateInstance(arrayType, elements.Length)
        elements |> Array.iteri (fun i element -> array.SetValue(element, i))
        box array

    /// <summary>A value in the form Npgsql writes for a column of this type; null for SQL NULL.</summary>
    /// <remarks>
    /// null, DBNull, None and ValueNone are NULL; Some x is x. A JsonElement is read as the column's
    /// type (strings for timestamps, uuids and base64 bytea; JSON null is NULL). json/jsonb take JSON
    /// text, a JsonElement/Document/Node, or any value (serialized with System.Text.Json). For
    /// timestamptz, DateTimeOffset and local DateTime values are converted to UTC. Integers are converted
    /// to an integer column's type (OverflowException if they do not fit), integers and floats to
    /// numeric and double precision. Other values go to
    /// Npgsql as they are.
    /// </remarks>
    let normalize (pgType: PgType) (value: obj) : obj =
        if pgType.IsArray then
            match present value with
            | null -> null
            | :? JsonElement as json when json.ValueKind = JsonValueKind.Null -> null
            | :? JsonElement as json -> arrayOfJson pgType.Scalar json
            | value -> value
        else
            normalizeScalar pgType.Scalar value

    /// <summary>Writes one field of the current COPY row.</summary>
    /// <remarks>Raises InvalidCastException (or Npgsql's error) when the value does not fit the type.</remarks>
    let write (importer: NpgsqlBinaryImporter) (pgType: PgType) (value: obj) =
        match normalize pgType value with
        | null -> importer.WriteNull()
        | value -> importer.Write<obj>(value, dbType pgType)
