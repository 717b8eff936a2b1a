"""Long documents in scripts that budget differently, generated from sentence templates
(nothing downloaded): news-like articles of 12,000-40,000 characters and more than 100
paragraphs, in Chinese, Japanese, Arabic, Thai and Hindi, with the protected spans and
grapheme clusters real posts carry (URLs, @mentions, emoji ZWJ sequences, Devanagari
conjuncts, Thai vowel marks). Deterministic for a seed; used by tests and the benchmark.
"""

from __future__ import annotations

import random

SENTENCES = {
    "zh": [
        "市政府今天宣布了新的公共交通计划，预计明年春季开始实施。",
        "许多居民表示，早高峰时段的地铁过于拥挤，希望增加班次。",
        "专家认为，这项政策将减少城市中心的交通拥堵和空气污染。",
        "据统计，去年全市公交系统共运送乘客超过二十亿人次！",
        "你觉得新的票价方案公平吗？",
        "更多信息请访问 https://city.example/transit 或关注 @CityTransit 的公告。",
        "部分商户担心施工期间客流会明显下降；市政府承诺提供补贴。",
        "社区代表在听证会上提出了十几条具体建议 👩‍👩‍👧。",
    ],
    "ja": [
        "市は本日、新しい公共交通計画を発表し、来年の春から実施する予定です。",
        "多くの住民は、朝のラッシュ時の電車が混みすぎていると話しています。",
        "専門家によると、この政策は都心の渋滞と大気汚染を減らすということです！",
        "昨年、市内のバスは延べ二十億人以上の乗客を運びました。",
        "新しい運賃は公平だと思いますか？",
        "詳しくは https://city.example/transit をご覧いただくか、@CityTransit をフォローしてください。",
        "工事の間、商店街の客足が減ることを心配する声もあります。",
        "住民代表は公聴会で、具体的な提案を十数件示しました 🚇。",
    ],
    "ar": [
        "أعلنت البلدية اليوم خطة جديدة للنقل العام تبدأ في الربيع المقبل.",
        "قال كثير من السكان إن القطارات مزدحمة جدا في ساعات الصباح.",
        "يرى الخبراء أن هذه السياسة ستقلل الازدحام وتلوث الهواء في وسط المدينة!",
        "هل تعتقد أن الأسعار الجديدة عادلة؟",
        "نقلت الحافلات أكثر من ملياري راكب في العام الماضي، وفق الإحصاءات الرسمية.",
        "لمزيد من المعلومات زوروا https://city.example/transit أو تابعوا @CityTransit.",
        "يخشى بعض التجار انخفاض عدد الزبائن أثناء أعمال البناء؛ ووعدت البلدية بالدعم.",
        "قدّم ممثلو الأحياء عشرات الاقتراحات خلال جلسة الاستماع 🚌.",
    ],
    "th": [
        "เทศบาลประกาศแผนการขนส่งสาธารณะใหม่ในวันนี้ ซึ่งจะเริ่มใช้ในฤดูใบไม้ผลิปีหน้า",
        "ผู้อยู่อาศัยหลายคนบอกว่ารถไฟฟ้าในช่วงเช้าแออัดเกินไป",
        "ผู้เชี่ยวชาญเห็นว่านโยบายนี้ จะช่วยลดการจราจรติดขัด และมลพิษทางอากาศในใจกลางเมือง",
        "เมื่อปีที่แล้ว รถโดยสารประจำทางรับส่งผู้โดยสารมากกว่าสองพันล้านเที่ยว",
        "คุณคิดว่าค่าโดยสารใหม่ยุติธรรมหรือไม่",
        "ดูข้อมูลเพิ่มเติมได้ที่ https://city.example/transit หรือติดตาม @CityTransit",
        "ร้านค้าบางแห่งกังวลว่า ลูกค้าจะลดลงระหว่างการก่อสร้าง",
        "ตัวแทนชุมชนเสนอข้อเสนอแนะหลายสิบข้อ ในการรับฟังความคิดเห็น 🚆",
    ],
    "hi": [
        "नगर निगम ने आज सार्वजनिक परिवहन की नई योजना की घोषणा की, जो अगले वसंत से लागू होगी।",
        "कई निवासियों ने कहा कि सुबह के समय मेट्रो में बहुत भीड़ रहती है।",
        "विशेषज्ञों का मानना है कि इस नीति से शहर के केंद्र में जाम और प्रदूषण कम होगा!",
        "क्या आपको लगता है कि नया किराया उचित है?",
        "पिछले वर्ष शहर की बसों ने दो अरब से अधिक यात्रियों को सफ़र कराया।",
        "अधिक जानकारी के लिए https://city.example/transit देखें या @CityTransit को फ़ॉलो करें।",
        "कुछ दुकानदारों को चिंता है कि निर्माण के दौरान ग्राहक घटेंगे।",
        "मोहल्ला प्रतिनिधियों ने जनसुनवाई में दर्जनों सुझाव दिए 🚉।",
    ],
}

# What joins two sentences of a paragraph: nothing after CJK full stops, a space elsewhere
# (Thai writes a space between sentences and clauses, and none between words).
JOINERS = {"zh": "", "ja": "", "ar": " ", "th": " ", "hi": " "}


def long_document(lang: str, chars: int, seed: int = 0) -> str:
    """At least `chars` characters of `lang`, in paragraphs of 1-3 sentences (so 13,000
    characters are over 100 paragraphs in every script), separated by blank lines."""
    rnd = random.Random(f"{lang}-{seed}")
    sentences, joiner = SENTENCES[lang], JOINERS[lang]
    paragraphs: list[str] = []
    total = 0
    while total < chars:
        paragraph = joiner.join(rnd.choice(sentences) for _ in range(rnd.choice((1, 1, 2, 3))))
        paragraphs.append(paragraph)
        total += len(paragraph) + 2
    return "\n\n".join(paragraphs)


def long_post(chars: int, seed: int = 0) -> str:
    """One forum thread of `chars` characters mixing the five scripts, for sentiment."""
    rnd = random.Random(seed)
    parts, total = [], 0
    while total < chars:
        lang = rnd.choice(sorted(SENTENCES))
        part = long_document(lang, 400, seed=rnd.randint(0, 10**6))
        parts.append(part)
        total += len(part) + 2
    return "\n\n".join(parts)
