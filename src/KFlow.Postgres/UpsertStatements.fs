// The SQL text of one writer (the Unnest and Copy statements, the COPY into the table, the exactly-once
// recording around them), built once from quoted identifiers when the writer is made.
namespace KFlow.Postgres

/// How a writer sends a batch (chosen at start-up from the fields' types).
[<RequireQualifiedAccess>]
type UpsertMethod =
    /// One INSERT ... SELECT FROM unnest(one array parameter per field): one statement, one round
    /// trip. Used when no field is an array column (unnest would flatten those).
    | Unnest
    /// A temp table (ON COMMIT DROP), binary COPY into it, then INSERT ... SELECT from it, in one
    /// transaction. Used when a field is an array column.
    | Copy

/// The SQL of one writer, built once from quoted identifiers.
type internal UpsertStatements = {
    Method: UpsertMethod
    /// The offsets table in exactly-once mode: the statements below then record the batch's offsets and
    /// return how many of them were recorded before (nothing is written unless none was).
    Applied: PgAppliedOffsets option
    Unnest: string
    UnnestInsert: string
    /// Unnest and UnnestInsert without DISTINCT ON and its sort, for a batch whose keys all differ.
    UnnestDistinct: string
    UnnestInsertDistinct: string
    CreateStage: string
    Copy: string
    Insert: string
    /// A binary COPY straight into the table (a large statement of new, distinct keys; not in
    /// exactly-once mode).
    CopyInto: string
}

/// Building a writer's statements.
[<RequireQualifiedAccess>]
module internal UpsertStatements =
    /// The statements writing <c>fieldColumns</c> of <c>table</c>, upserting on <c>keys</c> (appending
    /// when there are none) and, with <c>applied</c>, recording the batch's offsets in the same statement.
    let create
        (table: PgIdentifier)
        (fieldColumns: PgColumn list)
        (keys: string list)
        (applied: PgAppliedOffsets option)
        =
        let fields = fieldColumns |> List.map _.Name

        let ordinal =
            Seq.initInfinite (fun i -> if i = 0 then "kflow_ordinal" else $"kflow_ordinal_{i}")
            |> Seq.find (fun name -> not (List.contains name fields))
            |> PgIdentifier.quote

        let quoted names =
            names |> List.map PgIdentifier.quote |> String.concat ", "

        let columns = quoted fields
        let keyColumns = quoted keys

        // DISTINCT ON compares keys as the unique constraint does: under the column's own collation.
        let distinctKeys =
            keys
            |> List.map (fun key ->
                match fieldColumns |> List.tryFind (fun c -> c.Name = key) with
                | Some { Collation = Some collation } -> $"{PgIdentifier.quote key} COLLATE {collation}"
                | _ -> PgIdentifier.quote key)
            |> String.concat ", "

        let stage = "pg_temp.kflow_stage"

        let onConflict =
            match fields |> List.filter (fun f -> not (List.contains f keys)) with
            | [] -> "DO NOTHING"
            | others ->
                "DO UPDATE SET "
                + (others
                   |> List.map (fun f -> $"{PgIdentifier.quote f} = EXCLUDED.{PgIdentifier.quote f}")
                   |> String.concat ", ")

        let method =
            if fieldColumns |> List.exists (fun c -> c.Type |> Option.exists _.IsArray) then
                UpsertMethod.Copy
            else
                UpsertMethod.Unnest

        let parameters = fields |> List.mapi (fun i _ -> $"${i + 1}") |> String.concat ", "

        // In exactly-once mode the rows are written only if none of the batch's offsets was recorded
        // before (kflow_seen), by a data-modifying WITH item, in the statement that records them.
        let guard =
            match applied with
            | Some _ -> " WHERE " + PgAppliedOffsets.writeCondition
            | None -> ""

        /// INSERT of `source` (a FROM clause whose rows carry the fields and the ordinal), the last row
        /// per key winning unless `distinct` (the caller knows no two rows share a key), with `conflict`
        /// ("" for a plain insert).
        let insertFrom (distinct: bool) (source: string) (conflict: string) =
            if List.isEmpty keys || distinct then
                $"INSERT INTO {table.Sql} ({columns}) SELECT {columns} FROM {source}{guard}{conflict}"
            else
                $"INSERT INTO {table.Sql} ({columns}) SELECT DISTINCT ON ({distinctKeys}) {columns}                   FROM {source}{guard} ORDER BY {distinctKeys}, {ordinal} DESC{conflict}"

        let recording (firstParameter: int) (insert: string) =
            match applied with
            | Some offsets ->
                $"WITH {PgAppliedOffsets.recordItems offsets firstParameter}, kflow_write AS ({insert})                   {PgAppliedOffsets.outcome}"
            | None -> insert

        let unnested =
            $"unnest({parameters}) WITH ORDINALITY AS kflow_rows ({columns}, {ordinal})"

        let upsert =
            if List.isEmpty keys then
                ""
            else
                $" ON CONFLICT ({keyColumns}) {onConflict}"

        {
            Method = method
            Applied = applied
            Unnest = recording (fields.Length + 1) (insertFrom false unnested upsert)
            UnnestInsert = recording (fields.Length + 1) (insertFrom false unnested "")
            UnnestDistinct = recording (fields.Length + 1) (insertFrom true unnested upsert)
            UnnestInsertDistinct = recording (fields.Length + 1) (insertFrom true unnested "")
            CreateStage =
                $"CREATE TEMP TABLE kflow_stage ON COMMIT DROP AS SELECT 0::int4 AS {ordinal}, {columns}                   FROM {table.Sql} WITH NO DATA"
            Copy = $"COPY {stage} ({ordinal}, {columns}) FROM STDIN (FORMAT BINARY)"
            Insert = recording 1 (insertFrom false stage upsert)
            CopyInto = $"COPY {table.Sql} ({columns}) FROM STDIN (FORMAT BINARY)"
        }
