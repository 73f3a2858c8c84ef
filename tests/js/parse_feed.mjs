// Reads an iCalendar feed on stdin, parses it with ical.js (Thunderbird's parser) and
// prints JSON: {"calendar": {...}, "events": [{uid, summary, description, location,
// categories, status, sequence, start, end, allDay, startTzid}]}. Timed starts/ends are
// UTC ISO 8601 (resolved through the feed's own VTIMEZONEs); all-day ones are YYYY-MM-DD.
// Exits non-zero with the parser's message when the feed does not parse.
import ICAL from "ical.js";

function readStdin() {
  return new Promise((resolve, reject) => {
    const chunks = [];
    process.stdin.on("data", (c) => chunks.push(c));
    process.stdin.on("end", () => resolve(Buffer.concat(chunks).toString("utf8")));
    process.stdin.on("error", reject);
  });
}

function when(time) {
  if (time.isDate) return time.toString();
  if (time.zone === ICAL.Timezone.localTimezone || !time.zone) {
    throw new Error(`floating time ${time.toString()} (no zone resolved)`);
  }
  return time.toJSDate().toISOString();
}

const text = await readStdin();
try {
  const root = new ICAL.Component(ICAL.parse(text));
  for (const vtz of root.getAllSubcomponents("vtimezone")) {
    ICAL.TimezoneService.register(vtz);
  }
  const calendar = {};
  for (const name of ["prodid", "version", "calscale", "method", "x-wr-calname",
                      "x-wr-timezone", "refresh-interval", "x-published-ttl"]) {
    const value = root.getFirstPropertyValue(name);
    calendar[name] = value === null ? null : String(value);
  }
  const events = root.getAllSubcomponents("vevent").map((vevent) => {
    const ev = new ICAL.Event(vevent);
    const startProp = vevent.getFirstProperty("dtstart");
    return {
      uid: ev.uid,
      summary: ev.summary,
      description: ev.description,
      location: ev.location,
      categories: vevent.getAllProperties("categories").flatMap((p) => p.getValues()),
      status: vevent.getFirstPropertyValue("status"),
      sequence: ev.sequence,
      start: when(ev.startDate),
      end: when(ev.endDate),
      allDay: ev.startDate.isDate,
      startTzid: startProp.getParameter("tzid") || null,
    };
  });
  process.stdout.write(JSON.stringify({ calendar, events }));
} catch (err) {
  process.stderr.write(`ical.js: ${err && err.message ? err.message : err}\n`);
  process.exit(1);
}
